"""Hand-made mutation testing: do the tests notice when the method is broken?

Each mutant below is a small, deliberate bug in the library (file, exact original snippet,
replacement) plus the tests that should catch it. The script copies the repository to a
temporary folder (the working tree is never touched), runs the listed tests once on the
unmodified copy (they must pass, or the check stops), then applies each mutant in turn,
runs its tests and restores the file. A mutant is

* ``killed``   when its tests fail (or time out),
* ``SURVIVED`` when they all pass: a test is missing or too weak,
* ``STALE``    when its original snippet is not found exactly once (the code moved: update
  the mutant; it is never skipped silently), or its tests are not found.

Usage (from the repository root, in the project's virtual environment)::

    python tools/mutation_check.py              # every mutant
    python tools/mutation_check.py --only ema   # mutants whose name contains 'ema'
    python tools/mutation_check.py --list       # names, files and tests only

Exit status: 0 all killed; 1 some survived; 2 none survived but some are stale or errored;
3 the tests fail on the unmodified copy. Add a mutant whenever a bug is fixed or a test is
written to protect the method: the snippet must appear exactly once in its file.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

REPO = Path(__file__).resolve().parents[1]
PKG = "pcdet_rmae_ts"
# Top-level folders that are not copied (environment, history, run outputs, datasets).
SKIP_TOP = {".venv", ".git", "output", "data", "build", "dist"}
SKIP_ANY = {"__pycache__", ".pytest_cache", ".ruff_cache"}


@dataclass(frozen=True)
class Mutant:
    name: str
    path: str                 # relative to the repository root
    original: str             # must occur exactly once in the file
    replacement: str
    tests: Tuple[str, ...]    # pytest node ids (file or file::test, all parametrisations)
    why: str = ""


T_OCC = "tests/test_occupancy.py"
T_BB = "tests/test_backbone.py"
T_TRAIN = "tests/test_trainer_step.py"
T_TARGETS = "tests/test_voxel_targets.py"
T_MASK = "tests/test_masking.py"
T_TEACHER = "tests/test_teacher.py"
T_LR = "tests/test_differential_lr.py"

MUTANTS: Tuple[Mutant, ...] = (
    # ---------------------------------------------------------------- the R-MAE objective
    Mutant("occupancy target from visible voxels", f"{PKG}/models/backbone.py",
           'target = occupancy_targets(ret["coords"], ret["batch_size"]',
           'target = occupancy_targets(ret["coords"][ret["mask"].keep], ret["batch_size"]',
           (f"{T_BB}::test_occupancy_loss_targets_the_complete_scene",),
           "the student must reconstruct the complete scene, masked voxels included"),
    Mutant("occupancy_loss ignores valid", f"{PKG}/occupancy.py",
           "    if valid is None:\n        return loss.flatten(1).mean(1).mean()",
           "    if True:\n        return loss.flatten(1).mean(1).mean()",
           (T_OCC,)),
    Mutant("occupancy_loss averages cells, not scenes", f"{PKG}/occupancy.py",
           "    return per_sample_mean(loss, valid).mean()",
           "    valid = valid.expand_as(loss).float()\n    return (loss * valid).sum() / valid.sum().clamp(min=1.0)",
           (T_OCC,)),
    Mutant("occupancy_loss ignores POS_WEIGHT", f"{PKG}/occupancy.py",
           "pos_weight=weight, reduction=\"none\"", "pos_weight=None, reduction=\"none\"", (T_OCC,)),
    Mutant("focal term inverted", f"{PKG}/occupancy.py",
           "(1 - p_true).pow(focal_gamma)", "p_true.pow(focal_gamma)", (T_OCC,)),
    Mutant("cells_in_range swaps x and y", f"{PKG}/occupancy.py",
           "ax_x, ax_y, ax_z = axes", "ax_y, ax_x, ax_z = axes", (T_OCC,)),
    Mutant("decoder swaps y and x of the sites", f"{PKG}/occupancy.py",
           "* y + indices[:, 2]) * x + indices[:, 3]", "* y + indices[:, 3]) * x + indices[:, 2]", (T_OCC,)),
    # ---------------------------------------------------------------- loss composition
    Mutant("TEACHER_STUDENT_WEIGHT ignored", f"{PKG}/models/backbone.py",
           "loss = loss + weights.teacher_student * ts_loss", "loss = loss + ts_loss",
           (f"{T_BB}::test_total_loss_applies_every_weight",)),
    Mutant("RMAE_WEIGHT ignored", f"{PKG}/models/backbone.py",
           "loss = weights.rmae * occ_loss", "loss = occ_loss",
           (f"{T_BB}::test_total_loss_applies_every_weight",
            f"{T_BB}::test_phase1_total_loss_is_the_weighted_occupancy_loss")),
    # ---------------------------------------------------------------- teacher
    Mutant("teacher sees the masked voxels", f"{PKG}/models/backbone.py",
           'ret["teacher"] = self._teacher_forward(features, coords, batch_size)',
           'mask = self.masker(coords, batch_size); '
           'ret["teacher"] = self._teacher_forward(features[mask.keep], coords[mask.keep], batch_size)',
           (f"{T_BB}::test_teacher_encodes_the_complete_voxels",)),
    Mutant("EMA momentum not scheduled", f"{PKG}/models/backbone.py",
           "momentum = cosine_momentum(progress, self.teacher_cfg.momentum)",
           "momentum = self.teacher_cfg.momentum",
           (f"{T_BB}::test_ema_update_moves_teacher_toward_student",)),
    Mutant("EMA weights student and teacher the wrong way", f"{PKG}/teacher.py",
           "[s for _, s in params], 1.0 - momentum)", "[s for _, s in params], momentum)", (T_TEACHER,)),
    Mutant("PretrainModel skips the EMA update", f"{PKG}/models/pretrain_model.py",
           "momentum = self.backbone_3d.update_teacher(progress=progress)", "momentum = None",
           (f"{T_TRAIN}::test_pretrain_model_after_optimizer_step_counts_and_moves_the_ema_teacher",)),
    # ---------------------------------------------------------------- Phase 2 memory (issue 15)
    Mutant("MLFR smooth-L1 keeps prediction and target", f"{PKG}/losses/mlfr.py",
           "        diff = pred.float() - target\n"
           "        return F.smooth_l1_loss(diff, diff.new_zeros(()).expand_as(diff),",
           "        return F.smooth_l1_loss(pred.float(), target,",
           ("tests/test_losses.py::test_mlfr_smooth_l1_keeps_one_float32_tensor_for_backward_and_its_values",)),
    Mutant("MLFR head kept for backward", f"{PKG}/losses/mlfr.py",
           "        return checkpoint(self.head, features, use_reentrant=False, preserve_rng_state=False)",
           "        return self.head(features)",
           ("tests/test_losses.py::test_mlfr_decoder_head_is_recomputed_in_backward_with_the_same_gradients",)),
    # ---------------------------------------------------------------- trainer
    Mutant("trainer never applies the EMA update", f"{PKG}/engine/trainer.py",
           "after = unwrap(self.model).after_optimizer_step(progress=(state.it + 1) / max(self.total_iters, 1))",
           "after = {}", (T_TRAIN,)),
    Mutant("EMA progress off by one step", f"{PKG}/engine/trainer.py",
           "after_optimizer_step(progress=(state.it + 1) / max(self.total_iters, 1))",
           "after_optimizer_step(progress=state.it / max(self.total_iters, 1))", (T_TRAIN,)),
    Mutant("scheduler stepped with it + 1", f"{PKG}/engine/trainer.py",
           "self.scheduler.step(state.it, state.epoch)", "self.scheduler.step(state.it + 1, state.epoch)",
           (T_TRAIN,)),
    Mutant("finite-loss check skipped", f"{PKG}/engine/trainer.py",
           "if not torch.isfinite(loss):", "if False:", (T_TRAIN,)),
    Mutant("gradient not clipped", f"{PKG}/engine/trainer.py",
           "clip_grad_norm_(self.model.parameters(), self.loop.grad_norm_clip)",
           "clip_grad_norm_(self.model.parameters(), float('inf'))", (T_TRAIN,)),
    Mutant("gradients accumulate across steps", f"{PKG}/engine/trainer.py",
           "self.optimizer.zero_grad(set_to_none=True)", "pass", (T_TRAIN,)),
    # ---------------------------------------------------------------- optimizer
    Mutant("point-head default LR ratio 1.0", f"{PKG}/optim/differential_lr.py",
           'ratio("POINT_HEAD_LR_RATIO", dense)', 'ratio("POINT_HEAD_LR_RATIO", 1.0)', (T_LR,)),
    # ---------------------------------------------------------------- masking
    Mutant("crossing sector always taken", f"{PKG}/masking.py",
           "take_sorted = torch.rand(batch_size, num, device=device, generator=gen) < take_prob",
           "take_sorted = take_prob > 0", (T_MASK,)),
    Mutant("floor unmasks at most one voxel", f"{PKG}/masking.py",
           "return keep | (ranks < deficit[batch])", "return keep | (ranks < deficit[batch].clamp(max=1))",
           (T_MASK,)),
    Mutant("masker load_state_dict does nothing", f"{PKG}/masking.py",
           "self.generator(torch.device(key)).set_state(gen_state)", "pass", (T_MASK,)),
    # ---------------------------------------------------------------- VoxelNeXt targets
    Mutant("target centre y clamped to the x size", f"{PKG}/voxel_targets.py",
           "min=0, max=spatial_shape[0] - 0.5)", "min=0, max=spatial_shape[1] - 0.5)", (T_TARGETS,)),
    Mutant("boxes past NUM_MAX_OBJS get targets", f"{PKG}/voxel_targets.py",
           "boxes = gt_boxes[:num_max_objs]", "boxes = gt_boxes", (T_TARGETS,)),
    Mutant("Gaussians overwrite instead of max", f"{PKG}/voxel_targets.py",
           '"amax", include_self=True)', '"amax", include_self=False)', (T_TARGETS,)),
    # ---------------------------------------------------------------- teacher-student losses
    Mutant("per-scene mean divides by all scenes, weightless ones too", f"{PKG}/losses/common.py",
           "return (scene * valid).sum() / valid.sum()", "return (scene * valid).sum() / batch_size",
           ("tests/test_losses.py",), "a batch with an empty scene would shrink the MLFR and contrast losses"),
    Mutant("MLFR sorts x_conv4 instead of summing its stacked rows", f"{PKG}/losses/mlfr.py",
           'STACKED_SCALES = ("x_conv4",)', "STACKED_SCALES = ()", ("tests/test_losses.py",),
           "conv4/conv5/conv6 rows at one site would be separate targets, not their sum"),
    # ---------------------------------------------------------------- OpenPCDet launcher
    Mutant("NumPy scalars not allowed in OpenPCDet's checkpoint loads", f"{PKG}/integration/pcdet.py",
           "    add_safe_globals(allowed)\n", "", ("tests/test_integration_launcher.py",),
           "stock train.py's final evaluation and test.py then fail on every adam_onecycle checkpoint"),
)


# ----------------------------------------------------------------------------- machinery
def copy_repo(src: Path, dst: Path) -> None:
    def ignore(folder: str, names: List[str]) -> List[str]:
        top = Path(folder).resolve() == src.resolve()
        return [n for n in names if n in SKIP_ANY or n.endswith(".egg-info") or (top and n in SKIP_TOP)]

    shutil.copytree(src, dst, ignore=ignore, symlinks=True)


def child_env(copy: Path) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(copy) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["PYTHONDONTWRITEBYTECODE"] = "1"  # a restored file must never be shadowed by a mutant's .pyc
    return env


def check_import_points_at(copy: Path) -> None:
    out = subprocess.run([sys.executable, "-c", f"import {PKG}; print({PKG}.__file__)"], cwd=copy,
                         env=child_env(copy), capture_output=True, text=True, check=False)
    where = Path(out.stdout.strip() or "?").resolve()
    if out.returncode != 0 or copy.resolve() not in where.parents:
        sys.exit(f"mutation_check: '{PKG}' imports from {where}, not from the copy {copy}; "
                 f"stderr: {out.stderr.strip()[-500:]}")


def run_tests(copy: Path, tests: Sequence[str], timeout: float) -> Tuple[Optional[int], float, str]:
    """(pytest exit code or None on timeout, seconds, last lines of output)."""
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "--no-header", *tests]
    start = time.time()
    try:
        out = subprocess.run(cmd, cwd=copy, env=child_env(copy), capture_output=True, text=True,
                             timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return None, time.time() - start, "timeout"
    tail = "\n".join((out.stdout + out.stderr).strip().splitlines()[-3:])
    return out.returncode, time.time() - start, tail


def staleness(copy: Path, mutant: Mutant) -> Optional[str]:
    path = copy / mutant.path
    if not path.exists():
        return f"{mutant.path} does not exist"
    count = path.read_text().count(mutant.original)
    if count != 1:
        return f"original snippet found {count} times in {mutant.path}"
    missing = [t for t in mutant.tests if not (copy / t.split("::")[0]).exists()]
    return f"test file(s) missing: {missing}" if missing else None


def run_mutant(copy: Path, mutant: Mutant, timeout: float) -> Tuple[str, float, str]:
    path = copy / mutant.path
    source = path.read_text()
    path.write_text(source.replace(mutant.original, mutant.replacement, 1))
    try:
        code, seconds, tail = run_tests(copy, mutant.tests, timeout)
    finally:
        path.write_text(source)
    if code is None:
        return "killed (timeout)", seconds, tail
    if code == 0:
        return "SURVIVED", seconds, tail
    if code == 1:
        return "killed", seconds, tail
    return f"ERROR (pytest exit {code})", seconds, tail  # 2-5: interrupted, usage, no tests collected


def print_table(rows: Sequence[Tuple[str, str, str, str]]) -> None:
    header = ("mutant", "file", "result", "seconds")
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(4)]
    line = "| " + " | ".join(h.ljust(w) for h, w in zip(header, widths)) + " |"
    print(line)
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in rows:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |")


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repo", type=Path, default=REPO, help="repository to copy (default: this one)")
    parser.add_argument("--only", default="", help="run mutants whose name contains this text")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per test run")
    parser.add_argument("--keep", action="store_true", help="keep the temporary copy")
    parser.add_argument("--verbose", action="store_true", help="show the last lines of every test run")
    args = parser.parse_args(argv)
    mutants = [m for m in MUTANTS if args.only.lower() in m.name.lower()]
    if args.list:
        for m in mutants:
            print(f"{m.name}: {m.path} -> {' '.join(m.tests)}")
        return 0
    if not mutants:
        print(f"mutation_check: no mutant name contains {args.only!r}", file=sys.stderr)
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="mutation_check_"))
    copy = tmp / "repo"
    try:
        copy_repo(args.repo.resolve(), copy)
        check_import_points_at(copy)
        stale = {m.name: staleness(copy, m) for m in mutants}
        live = [m for m in mutants if stale[m.name] is None]
        tests = list(dict.fromkeys(t for m in live for t in m.tests))
        if tests:
            code, seconds, tail = run_tests(copy, tests, args.timeout * 2)
            if code != 0:
                print(f"mutation_check: the tests fail on the unmodified copy ({seconds:.0f} s); fix them "
                      f"first:\n{tail}", file=sys.stderr)
                return 3
            print(f"baseline: {len(tests)} test selections pass on the unmodified copy ({seconds:.0f} s)")
        rows, results = [], []
        for m in mutants:
            if stale[m.name] is not None:
                result, seconds, note = "STALE", 0.0, stale[m.name]
            else:
                result, seconds, note = run_mutant(copy, m, args.timeout)
            results.append(result)
            rows.append((m.name, m.path, result, f"{seconds:.0f}"))
            show = args.verbose or result == "STALE" or result.startswith("ERROR")
            print(f"  {result:<10} {m.name}" + (f"\n      {note}" if show else ""), flush=True)
    finally:
        if args.keep:
            print(f"copy kept at {copy}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    print()
    print_table(rows)
    survived = results.count("SURVIVED")
    broken = sum(r == "STALE" or r.startswith("ERROR") for r in results)
    print(f"\n{len(results)} mutants: {sum(r.startswith('killed') for r in results)} killed, "
          f"{survived} survived, {broken} stale or errored")
    if survived:
        return 1
    return 2 if broken else 0


if __name__ == "__main__":
    sys.exit(main())

"""Does pretraining help? Label-efficiency runs through the user's own commands, resumable.

Creates the splits (an unlabelled pretraining pool, a labelled pool with nested fractions, a held-out
validation set), then runs only the README's commands: the generator, ``tools/create_infos.py``,
``tools/train_rmae_cmae_phase1.py`` (one pretraining per arm), ``tools/export_pretrained.py --weights
teacher`` (the ``rmae_ts_teacher`` arm: fine-tuned from R-MAE + TS's EMA teacher instead of its student),
``scripts/dist_train.sh`` and ``scripts/dist_test.sh``. Every finished fine-tune appends one record to
the results JSON at once; runs with a record are skipped, so the script continues where a device block
ended. It needs an OpenPCDet that the launchers find (``PCDET_TOOLS``) and never builds or contains
OpenPCDet.

    python benchmarks/label_efficiency/run.py --work output/label_efficiency \\
        --results benchmarks/results/label_efficiency.json --parallel 6 --budget_s 400

Every fine-tune gets the same number of iterations (``--finetune_iters``): a small fraction runs more
epochs, merged into one pass of its loader (OpenPCDet's ``--merge_all_iters_to_one_epoch``), so that the
one-cycle schedule and the optimiser steps match across fractions. Each fine-tune is scored by train.py's
own final evaluation (the same ``repeat_eval_ckpt`` -> ``dataset.evaluation`` path as ``dist_test.sh``);
runs with a seed in ``--dist_test_seeds`` at the smallest fraction are scored again by
``scripts/dist_test.sh`` and both numbers are kept. ``--parallel`` runs that many jobs at once on the one
GPU (pretrainings first; a fine-tune waits for its arm's encoder).

Folders under ``--work``: ``pool/`` (generated frames), ``pretrain/`` (ImageSets of the unlabelled +
labelled pools, no labels used), ``pretrain_output/`` (the pretraining runs), ``frac_<f>/`` (the
labelled subset's infos and gt database: gt_sampling never sees objects outside the fraction),
``runs/<name>.log``.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks"))
from openpcdet_log import train_lines  # noqa: E402
from results_file import git_commit  # noqa: E402

FT_CFG = "cfgs/custom_models/rmae_cmae_isarc_4class_finetune_phase1.yaml"
PRETRAIN_ARMS = {  # arm -> (pretraining config, extra --set pairs)
    "rmae": ("cfgs/custom_models/rmae_cmae_isarc_4class_pretraining_phase1.yaml", []),
    "rmae_ts": ("cfgs/custom_models/rmae_cmae_isarc_4class_pretraining_phase2.yaml", []),
    "rmae_voxels": ("cfgs/custom_models/rmae_cmae_isarc_4class_pretraining_phase1.yaml",
                    ["MODEL.BACKBONE_3D.MASKING_TARGET", "voxels"]),
}
# arm -> the pretraining arm whose EMA teacher it fine-tunes from, exported with the README's
# ``tools/export_pretrained.py --weights teacher`` (the other arms start from the student's encoder)
TEACHER_ARMS = {"rmae_ts_teacher": "rmae_ts"}

# What makes two runs comparable: records of one results file must agree on these (``--parallel`` and
# ``--workers`` change only the wall times, which the records keep per run).
PLAN_KEYS = ("profile", "data_seed", "pretrain_frames", "labelled_frames", "val_frames", "pretrain_epochs",
             "pretrain_amp", "finetune_iters", "batch_size")
_TIMINGS_LOCK = threading.Lock()  # the pretrainings run in threads and share pretrain_times.json


@dataclass(frozen=True)
class Run:
    """One fine-tune: which encoder, which LR rule, how many labels, which seed."""

    arm: str  # scratch | rmae | rmae_ts | rmae_voxels | rmae_ts_teacher
    lr: str  # differential | uniform | slow_backbone | frozen
    label_fraction: float
    seed: int

    @property
    def pretraining(self) -> Optional[str]:
        """The pretraining arm whose run gives this fine-tune its encoder (None: scratch)."""
        return None if self.arm == "scratch" else TEACHER_ARMS.get(self.arm, self.arm)

    @property
    def name(self) -> str:
        return f"{self.arm}_{self.lr}_f{self.label_fraction:g}_s{self.seed}"


LR_RULES = {  # LR rule -> OPTIMIZATION overrides of the fine-tune config
    "differential": ["OPTIMIZATION.DIFFERENTIAL_LR", "True"],  # backbone 0.1x, head 2.0x (the config's ratios)
    "uniform": ["OPTIMIZATION.DIFFERENTIAL_LR", "False"],  # OpenPCDet's one LR for everything
    # diagnostic: backbone 0.1x, head 1.0x; between 'differential' and 'uniform', it tells which ratio matters
    "slow_backbone": ["OPTIMIZATION.DIFFERENTIAL_LR", "True", "OPTIMIZATION.DENSE_HEAD_LR_RATIO", "1.0"],
    # diagnostic: backbone weights fixed (LR 0; BatchNorm statistics still adapt), head at 2.0x
    "frozen": ["OPTIMIZATION.DIFFERENTIAL_LR", "True", "OPTIMIZATION.BACKBONE_LR_RATIO", "0.0"],
}
PRETRAINED_ONLY = ("differential", "slow_backbone")  # rules that spare pretrained weights: not for scratch


def plan_runs(arms: List[str], fractions: List[float], seeds: int, seeds_at_full: int,
              lr_rules: Sequence[str] = ("differential", "uniform")) -> List[Run]:
    """Smallest fractions first (that is where pretraining should matter), scratch beside each arm.
    Scratch trains with one LR (``uniform``), and also ``frozen`` when asked (random features); the
    rules that spare pretrained weights (``PRETRAINED_ONLY``) are for pretrained arms only."""
    runs = []
    for fraction in sorted(fractions):
        for seed in range(seeds if fraction < 1.0 else seeds_at_full):
            for arm in arms:
                lrs = [lr for lr in lr_rules if arm != "scratch" or lr not in PRETRAINED_ONLY]
                if arm == "scratch" and "uniform" not in lrs:
                    lrs.insert(0, "uniform")
                runs.extend(Run(arm, lr, fraction, seed) for lr in lrs)
    return runs


def sh(cmd: List[str], log: Path, env: Optional[Dict[str, str]] = None) -> float:
    """Run a command from the repository root, its output into ``log``; wall seconds; raise on failure."""
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.time()
    with open(log, "a") as f:
        f.write(f"$ {' '.join(cmd)}\n")
        f.flush()
        status = subprocess.run(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT,
                                env=dict(os.environ, **(env or {}))).returncode
    if status:
        raise RuntimeError(f"exit {status}: {' '.join(cmd)} (log: {log})")
    return time.time() - start


def write_ids(folder: Path, split: str, ids: List[str]) -> None:
    (folder / "ImageSets").mkdir(parents=True, exist_ok=True)
    (folder / "ImageSets" / f"{split}.txt").write_text("\n".join(ids) + "\n")


def link_pool(folder: Path, pool: Path) -> None:
    """The generated points and labels, shared by every split folder (symbolic links, no copies)."""
    folder.mkdir(parents=True, exist_ok=True)
    for sub in ("points", "labels"):
        target = folder / sub
        if not target.is_symlink() and not target.exists():
            target.symlink_to(pool / sub, target_is_directory=True)


def split_ids(ids: List[str], pretrain_frames: int, labelled_frames: int, val_frames: int,
              fractions: List[float]) -> Dict[str, List[str]]:
    """Disjoint pools in a fixed order: the first frames are unlabelled, then the labelled pool, the last
    ``val_frames`` are held out. Each fraction takes the first ``round(f x labelled)`` labelled frames, so a
    smaller fraction is a subset of a larger one. Pretraining sees the unlabelled and labelled pools."""
    if len(ids) != pretrain_frames + labelled_frames + val_frames:
        raise ValueError(f"{len(ids)} frames, the plan needs {pretrain_frames + labelled_frames + val_frames}")
    labelled = ids[pretrain_frames:pretrain_frames + labelled_frames]
    splits = {"pretrain": ids[:pretrain_frames] + labelled, "val": ids[len(ids) - val_frames:]}
    for fraction in fractions:
        splits[f"train_{fraction:g}"] = labelled[:max(1, round(fraction * len(labelled)))]
    return splits


def prepare_pool(args, work: Path) -> Dict[str, List[str]]:
    """Generate the pool once and split it (nested fractions: the first k labelled frames); write the
    pretraining split, which needs no labels. Returns the splits."""
    pool = work / "pool"
    total = args.pretrain_frames + args.labelled_frames + args.val_frames
    if not (pool / "ImageSets" / "train.txt").exists():
        sh([sys.executable, "-m", "pcdet_rmae_ts.data.synthetic", "--out", str(pool), "--frames", str(total),
            "--profile", args.profile, "--cfg_file", FT_CFG, "--seed", str(args.data_seed),
            "--workers", str(os.cpu_count() or 1)], work / "data.log")
    ids = sorted(p.stem for p in (pool / "points").glob("*.npy"))
    if len(ids) != total:
        raise RuntimeError(f"{pool} holds {len(ids)} frames, the plan needs {total}: use a new --work folder")
    splits = split_ids(ids, args.pretrain_frames, args.labelled_frames, args.val_frames, args.fractions)
    write_ids(work / "pretrain", "train", splits["pretrain"])
    link_pool(work / "pretrain", pool)
    return splits


def prepare_fraction(fraction: float, splits: Dict[str, List[str]], work: Path) -> Path:
    """The fraction's DATA_PATH: its train / val ImageSets, infos and gt database (written once)."""
    folder = work / f"frac_{fraction:g}"
    if not (folder / "custom_infos_val.pkl").exists():
        link_pool(folder, work / "pool")
        write_ids(folder, "train", splits[f"train_{fraction:g}"])
        write_ids(folder, "val", splits["val"])
        sh([sys.executable, "tools/create_infos.py", "--cfg_file", FT_CFG, "--set", "DATA_CONFIG.DATA_PATH",
            str(folder)], work / f"data_{fraction:g}.log")
    return folder


def pretrain(arm: str, args, work: Path, timings: Dict[str, float], env: Dict[str, str],
             may_start: bool = True) -> Optional[Path]:
    """The encoder of one pretraining arm (pretrained once, reused by every fine-tune); None when it is
    not there yet and ``may_start`` is False (the device block's budget is spent)."""
    cfg, extra = PRETRAIN_ARMS[arm]
    tag = f"le_{arm}"
    ckpt_dir = work / "pretrain_output" / "custom_models" / Path(cfg).stem / tag / "ckpt"
    ckpt = ckpt_dir / f"checkpoint_epoch_{args.pretrain_epochs}.pth"
    if not ckpt.exists():
        if not may_start:
            return None
        amp = ["--amp"] if args.pretrain_amp else []
        workers = str(2 * args.workers)  # two pretrainings at most, each with batches of 8
        timings[arm] = sh([sys.executable, "tools/train_rmae_cmae_phase1.py", "--cfg_file", cfg, "--batch_size", "8",
                           "--epochs", str(args.pretrain_epochs), "--extra_tag", tag, "--workers", workers,
                           "--fix_random_seed", "--seed", "0", "--output_dir", str(work / "pretrain_output"), *amp,
                           "--set", "DATA_CONFIG.DATA_PATH",
                           str(work / "pretrain"), *extra], work / "runs" / f"pretrain_{arm}.log", env)
        with _TIMINGS_LOCK:
            (work / "pretrain_times.json").write_text(json.dumps(timings, indent=2))
    return ckpt


_EXPORT_LOCK = threading.Lock()  # the fine-tunes of a teacher arm start in threads; one export each


def teacher_encoder(arm: str, student_ckpt: Path, work: Path, env: Dict[str, str]) -> Path:
    """The EMA teacher's encoder of ``arm``'s source pretraining (exported once, reused)."""
    out = work / "pretrain_output" / f"{arm}_encoder.pth"
    with _EXPORT_LOCK:
        if not out.exists():
            sh([sys.executable, "tools/export_pretrained.py", "--ckpt", str(student_ckpt), "--weights", "teacher",
                "--out", str(out)], work / "runs" / f"export_{arm}.log", env)
    return out


def read_result(folder: Path) -> dict:
    found = sorted(folder.rglob("result_custom.json"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise RuntimeError(f"no result_custom.json under {folder}")
    return json.loads(found[-1].read_text())


CURVE_WINDOW = 25  # optimiser steps per point of a record's training-loss curve
LOG_EVERY = 5  # OpenPCDet's --logger_iter_interval for the fine-tunes


def train_log_figures(log_text: str) -> dict:
    """From OpenPCDet's train log (the last dist_train.sh attempt in ``log_text``): the first iteration's
    seconds in the model (OpenPCDet's "Forward time": forward, backward and step) and the training-loss
    curve, one ``[last step, mean loss]`` per window of ``CURVE_WINDOW`` steps (single-batch losses are
    noisy; the logged running mean resets every epoch)."""
    attempt = log_text.rsplit("scripts/dist_train.sh", 1)[-1]
    lines = train_lines(attempt)
    if not lines:
        return {}
    windows: Dict[int, List[float]] = {}
    for line in lines:
        windows.setdefault(-(-line.step // CURVE_WINDOW) * CURVE_WINDOW, []).append(line.loss)
    curve = [[end, round(sum(v) / len(v), 4)] for end, v in sorted(windows.items())]
    first = [line.forward_s for line in lines if line.step == 1]
    return {"first_iteration_s": first[0] if first else None, "loss_curve": curve}


def finetune_epochs(frames: int, batch_size: int, iterations: int) -> int:
    """Epochs that give at least ``iterations`` optimiser steps on ``frames`` labelled frames."""
    per_epoch = -(-frames // batch_size)
    return -(-iterations // per_epoch)


def finetune(run: Run, data: Path, frames: int, encoder: Optional[Path], args, work: Path, pcdet_root: Path,
             env: Dict[str, str], smallest: float) -> dict:
    """dist_train.sh (scored by its own final evaluation), optionally dist_test.sh; the results record."""
    log = work / "runs" / f"{run.name}.log"
    epochs = finetune_epochs(frames, args.batch_size, args.finetune_iters)
    common = ["--cfg_file", FT_CFG, "--batch_size", str(args.batch_size), "--extra_tag", f"le_{run.name}",
              "--workers", str(args.workers)]
    sets = ["--set", "DATA_CONFIG.DATA_PATH", str(data), *LR_RULES[run.lr]]
    # a Train line every 5 steps (OpenPCDet's default is every 50 and at epoch ends): the loss curve's
    # 25-step windows then hold several batches at every label fraction; logging only
    train = ["bash", "scripts/dist_train.sh", "1", *common, "--epochs", str(epochs), "--seed", str(run.seed),
             "--merge_all_iters_to_one_epoch", "--ckpt_save_interval", str(epochs),
             "--logger_iter_interval", str(LOG_EVERY)]
    if encoder is not None:
        train += ["--pretrained_model", str(encoder)]
    out = pcdet_root / "output" / "custom_models" / Path(FT_CFG).stem / f"le_{run.name}"
    # A run without a record starts over: OpenPCDet would resume from a killed run's checkpoints
    # (a different data order and schedule state) and its folder may hold stale evaluations.
    shutil.rmtree(out, ignore_errors=True)
    finetune_s = sh(train + sets, log, env)
    result = read_result(out / "eval" / "eval_with_train" / f"epoch_{epochs}")
    record = dict(asdict(run), mAP_3D=result["mAP_3D"], mAP_BEV=result["mAP_BEV"], AP_3D=result["AP_3D"],
                  AP_BEV=result["AP_BEV"], range=result.get("range"), finetune_s=round(finetune_s, 1),
                  finetune_epochs=epochs, scored_by="train.py final evaluation",
                  **train_log_figures(log.read_text()))
    if run.seed in args.dist_test_seeds and run.label_fraction == smallest:
        ckpt = out / "ckpt" / f"checkpoint_epoch_{epochs}.pth"
        sh(["bash", "scripts/dist_test.sh", "1", *common, "--ckpt", str(ckpt), *sets], log, env)
        again = read_result(out / "eval" / f"epoch_{epochs}")
        record.update(dist_test_mAP_3D=again["mAP_3D"], dist_test_mAP_BEV=again["mAP_BEV"])
    return record


def load_records(path: Path) -> List[dict]:
    return json.loads(path.read_text()) if path.exists() else []


def other_plans(records: List[dict], plan: dict) -> List[dict]:
    """The distinct plans (PLAN_KEYS only) of ``records`` that differ from ``plan``."""
    wanted = {k: plan.get(k) for k in PLAN_KEYS}
    found = []
    for record in records:
        theirs = {k: record.get("plan", {}).get(k) for k in PLAN_KEYS}
        if theirs != wanted and theirs not in found:
            found.append(theirs)
    return found


class Results:
    """The results file, rewritten whole after every finished run (by one thread at a time)."""

    def __init__(self, path: Path):
        self.path, self.lock = path, threading.Lock()
        self.records = load_records(path)

    def done(self) -> set:
        return {(r["arm"], r["lr"], float(r["label_fraction"]), r["seed"]) for r in self.records}

    def add(self, record: dict) -> None:
        with self.lock:
            self.records.append(record)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text(json.dumps(self.records, indent=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", default="output/label_efficiency")
    parser.add_argument("--results", default="benchmarks/results/label_efficiency.json")
    parser.add_argument("--arms", nargs="+", default=["scratch", "rmae", "rmae_ts"],
                        choices=["scratch", *PRETRAIN_ARMS, *TEACHER_ARMS])
    parser.add_argument("--fractions", nargs="+", type=float, default=[0.1, 1.0])
    parser.add_argument("--lr_rules", nargs="+", default=["differential", "uniform"], choices=list(LR_RULES),
                        help="fine-tuning LR rules of the pretrained arms (frozen: a diagnostic)")
    parser.add_argument("--seeds", type=int, default=3, help="fine-tuning seeds below 100 %% labels")
    parser.add_argument("--seeds_at_full", type=int, default=1)
    parser.add_argument("--profile", default="hard")
    parser.add_argument("--data_seed", type=int, default=0)
    parser.add_argument("--pretrain_frames", type=int, default=400)
    parser.add_argument("--labelled_frames", type=int, default=200)
    parser.add_argument("--val_frames", type=int, default=300)
    parser.add_argument("--pretrain_epochs", type=int, default=8)
    parser.add_argument("--pretrain_amp", action="store_true", help="pretrain with --amp")
    parser.add_argument("--finetune_iters", type=int, default=400, help="optimiser steps of every fine-tune")
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2, help="data-loader workers per job")
    parser.add_argument("--parallel", type=int, default=1, help="jobs at once on the one GPU")
    parser.add_argument("--dist_test_seeds", nargs="*", type=int, default=[0],
                        help="at the smallest fraction, also score these seeds with dist_test.sh")
    parser.add_argument("--budget_s", type=float, default=float("inf"),
                        help="start no new job after this many seconds (device blocks are short)")
    parser.add_argument("--pretrain_only", action="store_true",
                        help="generate the pool and pretrain the arms' encoders, nothing else: needs no OpenPCDet, "
                             "so it can run while OpenPCDet is being set up")
    args = parser.parse_args()
    if args.finetune_iters < 10:
        # OpenPCDet's adam_onecycle divides by int(PCT_START x total steps): too few steps crash it
        parser.error("--finetune_iters must be at least 10 (OpenPCDet's one-cycle schedule needs the steps)")
    started = time.time()
    work = (REPO / args.work).resolve()
    results = Results((REPO / args.results).resolve())
    plan = {k: getattr(args, k) for k in (*PLAN_KEYS, "workers", "parallel")}
    mixed = other_plans(results.records, plan)
    if mixed:
        parser.error(f"{results.path} holds runs of another plan ({mixed[0]}); this one is "
                     f"{ {k: plan[k] for k in PLAN_KEYS} }. Use another --results file or the same plan.")
    pcdet_root = Path(os.environ["PCDET_TOOLS"]).resolve().parent if os.environ.get("PCDET_TOOLS") else None
    if pcdet_root is None and not args.pretrain_only:
        import pcdet

        pcdet_root = Path(pcdet.__file__).resolve().parents[1]
    import torch

    card = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    # dirty: tracked files differ from the commit (a device's copy of .git can lag the files it came with)
    commit, dirty = git_commit()
    splits = prepare_pool(args, work)
    frames = {f: len(splits[f"train_{f:g}"]) for f in args.fractions}
    timings_file = work / "pretrain_times.json"
    timings = json.loads(timings_file.read_text()) if timings_file.exists() else {}
    done = results.done()
    planned = plan_runs(args.arms, args.fractions, args.seeds, args.seeds_at_full, args.lr_rules)
    todo = [r for r in planned if (r.arm, r.lr, float(r.label_fraction), r.seed) not in done]
    encoded, fractions = todo, args.fractions  # the runs whose encoders to pretrain; the fractions to prepare
    if args.pretrain_only:  # every asked-for arm's encoder, even where its runs are all done (a new machine);
        encoded, todo, fractions = planned, [], []  # no fine-tune, and no infos, which need OpenPCDet
    arms = [a for a in PRETRAIN_ARMS if any(r.pretraining == a for r in encoded)]
    ports = iter(range(29500 + (os.getpid() % 100) * 50, 1 << 16))
    port_lock = threading.Lock()

    def job_env() -> Dict[str, str]:
        with port_lock:  # one rendezvous port per job: concurrent torchrun launches must not collide
            return {"MASTER_PORT": str(next(ports)), "OMP_NUM_THREADS": "2"}

    def over_budget() -> bool:
        return time.time() - started > args.budget_s

    def pretrain_job(arm: str) -> Optional[Path]:
        return pretrain(arm, args, work, timings, job_env(), may_start=not over_budget())

    def finetune_job(run: Run) -> None:
        encoder = None if run.pretraining is None else encoders[run.pretraining].result()
        if over_budget() or (run.pretraining is not None and encoder is None):
            return
        if run.arm in TEACHER_ARMS:
            encoder = teacher_encoder(run.arm, encoder, work, job_env())
        data = folders[run.label_fraction].result()
        record = finetune(run, data, frames[run.label_fraction], encoder, args, work, pcdet_root, job_env(),
                          min(args.fractions))
        record.update(pretrain_s=timings.get(run.pretraining), card=card, commit=commit, dirty=dirty, plan=plan)
        results.add(record)
        print(f"{run.name}: mAP_3D {record['mAP_3D']:.2f} mAP_BEV {record['mAP_BEV']:.2f} "
              f"({record['finetune_s']:.0f} s, {time.time() - started:.0f} s in)", flush=True)

    # The infos of each fraction are written beside the pretrainings (CPU work, own threads). Pretrainings
    # take the first GPU slots, then the fine-tunes in plan order (each waits for its infos and encoder),
    # so that a short block still ends with scratch and pretrained runs of the same seeds side by side.
    with ThreadPoolExecutor(max_workers=max(1, len(fractions))) as cpu, \
            ThreadPoolExecutor(max_workers=max(1, args.parallel)) as gpu:
        folders = {f: cpu.submit(prepare_fraction, f, splits, work) for f in fractions}
        encoders = {arm: gpu.submit(pretrain_job, arm) for arm in arms}
        jobs = [gpu.submit(finetune_job, r) for r in todo]
        waited = jobs + list(encoders.values()) + list(folders.values())
        failures = [str(job.exception()) for job in waited if job.exception()]
    for failure in sorted(set(failures)):
        print(f"FAILED: {failure}", flush=True)
    print(f"{len(results.records)} records in {results.path}; {time.time() - started:.0f} s", flush=True)
    if failures:
        sys.exit(1)


if __name__ == "__main__":
    main()

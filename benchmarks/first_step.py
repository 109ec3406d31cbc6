"""First-training-step benchmark: wall time of the first and of a steady forward + backward step of the
VoxelNeXt encoder, each configuration in a fresh process, and how much of the first step spconv's tuning takes.

Why: an OpenPCDet fine-tune spends 25-180 s in its first iteration on an H200. spconv 2.x times every
candidate kernel once per new (dtype, channels, arch, mask width) key and keeps the winner in the process
only, so each training process pays again. Each row runs in its own child process (an empty tuning
cache), on one of bench_pretrain's steps (``--model``; default ``baseline``: MeanVFE + VoxelNeXtEncoder;
``ema``: the pretraining model with its EMA teacher every step), the engine's ``train_step``, dense
synthetic frames at the user's grid (``--small``: bench_pretrain's reduced grid).

Rows: ``default`` (spconv as is), ``splitk1`` (env SPCONV_BWD_SPLITK=1), ``amp`` (autocast fp16; CUDA
only), ``py_tuner`` and ``py_tuner_splitk1`` (spconv's Python tuner: ``spconv.pytorch.ops.SPCONV_CPP_GEMM``
set to False in the child), ``igemm_cpp`` (env SPCONV_CPP_INDICE_PAIRS_IGEMM=1: spconv builds the implicit
GEMM rule-books in one C++ call instead of ~20 Python-driven kernel calls per conv; issue 15's host time).
Columns:
  tune calls / tune s   calls of ``spconv.algo.SimpleConv.tune_and_cache`` and ``SimpleGemm.tune_and_cache``
                        in the first step and their time (synchronised). spconv 2.3.8 hard-codes
                        SPCONV_CPP_GEMM = True, so its ops call the C++ tuner (``ConvGemmOps`` with
                        ``CONV_CPP``), which these wrappers cannot see: '-' on such rows. The C++ tuner's
                        split-k list is compiled into the wheel, so SPCONV_BWD_SPLITK acts on the
                        ``py_tuner`` rows only.
  rules warm ms         time inside spconv's rule-book builders (``ops.get_indice_pairs_implicit_gemm``,
                        ``ops.get_indice_pairs``; synchronised) in the step after the warm-up
  conv first s / warm ms time inside spconv's conv ops (``spconv.pytorch.ops.implicit_gemm``, its backward,
                        ``indice_conv`` and its backward; tuning included) in the first step and in one
                        step after the warm-up; their difference estimates the tuning on either path
                        (first-call allocations included).
A second table gives the host time of one more steady step (issue 15: where the host time goes), with
no sync added, by part of ``train_step``: the model's forward (inside it the teacher's forward, spconv's
conv modules, i.e. ``SparseConvolution.forward`` with its Python, rule-book builders and forward op), the
backward (inside it spconv's backward ops), gradient clipping, the optimizer step, the after-step hook
(the EMA update), and the rest. With the kernels asynchronous these are host times, except where the
host waits on the device: a strided conv's rule-book (its output size), the non-finite loss check.
On the CPU spconv does not tune (native algorithm, torch matmuls): tune calls are 0 there.

    PYTHONPATH=. python benchmarks/first_step.py [--rows default splitk1 ...] [--small] [--out FILE|DIR|-]

Each run is added to ``benchmarks/results/first_step_<card>.json`` unless ``--out`` says otherwise.
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import functools
import importlib
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, Iterator, List, NamedTuple, Optional, Sequence, Tuple

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_pretrain as bp  # noqa: E402
from results_file import add_out_argument, append_run, card_name  # noqa: E402

from pcdet_rmae_ts.engine.trainer import TrainState  # noqa: E402

_LOG = logging.getLogger("first_step")
RESULT_TAG = "FIRST_STEP_ROW "  # the child's one stdout line the parent reads
FORWARD_OPS = ("implicit_gemm", "indice_conv")  # spconv's GPU and CPU conv ops
BACKWARD_OPS = ("implicit_gemm_backward", "indice_conv_backward")
CONV_OPS = FORWARD_OPS + BACKWARD_OPS
RULEBOOK_OPS = ("get_indice_pairs_implicit_gemm", "get_indice_pairs")
PART_RANGE = "first_step:"  # prefix of the profiler ranges that mark the parts of a step


class RowSpec(NamedTuple):
    env: Dict[str, str]
    amp: bool = False
    python_tuner: bool = False


ROWS = {
    "default": RowSpec({}),
    "splitk1": RowSpec({"SPCONV_BWD_SPLITK": "1"}),
    "amp": RowSpec({}, amp=True),
    "py_tuner": RowSpec({}, python_tuner=True),
    "py_tuner_splitk1": RowSpec({"SPCONV_BWD_SPLITK": "1"}, python_tuner=True),
    "igemm_cpp": RowSpec({"SPCONV_CPP_INDICE_PAIRS_IGEMM": "1"}),
}
# the caller's own values must not leak into 'default'
CLEARED_ENV = ("SPCONV_BWD_SPLITK", "SPCONV_CPP_INDICE_PAIRS_IGEMM")


# ----------------------------------------------------------------------------- call timing
class Tally:
    """Calls and seconds spent in wrapped functions, per function name as well. (A plain class: the
    tests load this script without registering it in sys.modules, which a dataclass needs.)"""

    def __init__(self) -> None:
        self.calls = 0
        self.seconds = 0.0
        self.by_name: Dict[str, int] = collections.Counter()

    def as_dict(self) -> dict:
        return {"calls": self.calls, "seconds": self.seconds, "by_name": dict(self.by_name)}


def _timed(fn: Callable, name: str, tally: Tally, sync: Callable[[], None]) -> Callable:
    @functools.wraps(fn)  # keeps the markers other patches look for (compat's __rmae_cpu_fix__)
    def wrapper(*args, **kwargs):
        sync()  # work queued before the call is not the call's
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            sync()
            tally.calls += 1
            tally.seconds += time.perf_counter() - start
            tally.by_name[name] += 1
    return wrapper


def _ranged(fn: Callable, part: str) -> Callable:
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with torch.profiler.record_function(PART_RANGE + part):
            return fn(*args, **kwargs)
    return wrapper


@contextlib.contextmanager
def wrapped_calls(targets: Sequence[Tuple[object, str]], wrap: Callable[[Callable, str], Callable]) -> Iterator[None]:
    """Replace ``owner.name`` by ``wrap(original, name)`` for each (owner, name) of ``targets`` (a class, an
    instance or a module); the originals are back on exit. A function found on a class is replaced there,
    so calls through every instance go through the wrapper."""
    saved = []
    try:
        for owner, name in targets:
            own = name in vars(owner)  # else found through the class: remove ours on exit
            original = vars(owner)[name] if own else getattr(owner, name)
            saved.append((owner, name, own, original))
            setattr(owner, name, wrap(original, name))
        yield
    finally:
        for owner, name, own, original in reversed(saved):
            if own:
                setattr(owner, name, original)
            else:
                delattr(owner, name)


@contextlib.contextmanager
def timed_calls(targets: Sequence[Tuple[object, str]], tally: Tally,
                sync: Callable[[], None] = lambda: None) -> Iterator[Tally]:
    """Count and time calls of ``owner.name`` for each (owner, name) of ``targets`` into ``tally``
    (:func:`wrapped_calls`); ``sync`` runs before and after each call (CUDA)."""
    with wrapped_calls(targets, lambda fn, name: _timed(fn, name, tally, sync)):
        yield tally


def tune_targets() -> List[Tuple[object, str]]:
    """spconv's Python tuners (classes of ``spconv.algo.CONV`` / ``GEMM``); none on a CPU-only build,
    whose ``spconv.algo`` does not import."""
    try:
        algo = importlib.import_module("spconv.algo")
    except ImportError:
        return []
    return [(algo.SimpleConv, "tune_and_cache"), (algo.SimpleGemm, "tune_and_cache")]


def conv_targets(names: Sequence[str] = CONV_OPS) -> List[Tuple[object, str]]:
    """spconv's conv ops (or other ``ops`` functions); ``spconv.pytorch.functional`` and
    ``spconv.pytorch.conv`` call them as ``ops.<name>`` at call time."""
    ops = importlib.import_module("spconv.pytorch.ops")
    return [(ops, name) for name in names if hasattr(ops, name)]


def tuner_kind(device: torch.device) -> str:
    """Which tuner the conv ops reach: 'none' (CPU), 'c++' (ConvGemmOps + CONV_CPP) or 'python'."""
    ops = importlib.import_module("spconv.pytorch.ops")
    if device.type != "cuda" or ops.CONV is None:
        return "none"
    return "c++" if ops.SPCONV_CPP_GEMM and ops.CONV_CPP is not None else "python"


def host_targets(model: torch.nn.Module, scaler) -> Dict[str, List[Tuple[object, str]]]:
    """What the host-time step times, by part of ``Trainer.train_step``: the model's forward (inside it
    the teacher's no-grad forward, the encoder forwards, the masking, the occupancy decoder and the losses
    with their teacher-student part, where the model has them), the backward, gradient clipping, the optimizer
    step (through the grad scaler) and the after-step hook (the EMA update); and spconv's conv modules (a
    class attribute, so every layer, student and teacher), inside them the rule-book builders and the
    forward ops, and the backward ops, which autograd runs. Each is looked up at call time by its caller."""
    conv = importlib.import_module("spconv.pytorch.conv")
    encoder = importlib.import_module("pcdet_rmae_ts.models.encoder").VoxelNeXtEncoder
    targets = {"forward": [(type(model), "forward")], "encode": [(encoder, "encode")],
               "backward": [(torch.autograd, "backward")], "clip": [(torch.nn.utils, "clip_grad_norm_")],
               "optimizer": [(type(scaler), "step")], "after_step": [(type(model), "after_optimizer_step")],
               "modules": [(conv.SparseConvolution, "forward")], "rulebooks": conv_targets(RULEBOOK_OPS),
               "forward_ops": conv_targets(FORWARD_OPS), "backward_ops": conv_targets(BACKWARD_OPS)}
    backbone = next((m for m in model.modules() if hasattr(m, "masker")), None)
    if backbone is not None:  # a pretraining backbone: its own parts (the plain encoder has none of them)
        targets.update(teacher=[(type(backbone), "_teacher_forward")], masking=[(type(backbone.masker), "__call__")],
                       decoder=[(type(backbone.occupancy_decoder), "forward")],
                       loss=[(type(backbone), "get_loss")], ts_loss=[(type(backbone), "_teacher_student_loss")])
    return targets


# the parts of a step, as host_table lists them; "rest" is the step less the top-level parts
HOST_PARTS = (("step", "whole step"), ("forward", "model forward"), ("teacher", "  teacher forward"),
              ("encode", "  encoder forwards (teacher, student)"), ("masking", "  masking"),
              ("decoder", "  occupancy decoder"), ("loss", "  losses"), ("ts_loss", "    teacher-student"),
              ("modules", "  spconv conv modules"), ("rulebooks", "    rule-books"),
              ("forward_ops", "    forward ops"), ("backward", "backward"),
              ("backward_ops", "  spconv backward ops"), ("clip", "gradient clipping"),
              ("optimizer", "optimizer step"), ("after_step", "after-step hook (EMA)"),
              ("rest", "rest (scheduler, batch, loss check)"))
TOP_LEVEL_PARTS = ("forward", "backward", "clip", "optimizer", "after_step")


def host_step(step: Callable[[], None], sync: Callable[[], None],
              targets: Dict[str, List[Tuple[object, str]]]) -> dict:
    """Host seconds of one ``step()`` (from a synchronised start to the return of the call) and of the
    calls of each part of ``targets`` (:func:`host_targets`), timed without any sync of their own."""
    parts = {name: Tally() for name in targets}
    with contextlib.ExitStack() as stack:
        for name, owners in targets.items():
            stack.enter_context(timed_calls(owners, parts[name]))
        sync()
        start = time.perf_counter()
        step()
        seconds = time.perf_counter() - start
    sync()
    return {"step_s": seconds, **{name: tally.as_dict() for name, tally in parts.items()}}


def device_step(step: Callable[[], None], targets: Dict[str, List[Tuple[object, str]]]) -> Dict[str, float]:
    """Kernel ms of one ``step()`` on CUDA (torch.profiler): ``total`` (every kernel, copy and fill; the
    device's own work, the floor a host cut can reach) and, per part of ``targets``, the kernels launched
    inside its calls. A part's kernels are counted once however its calls nest in other parts."""
    from torch.profiler import ProfilerActivity, profile
    with contextlib.ExitStack() as stack:
        for part, owners in targets.items():
            stack.enter_context(wrapped_calls(owners, lambda fn, name, part=part: _ranged(fn, part)))
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            step()
            torch.cuda.synchronize()
    events = prof.events()
    result = {"total": bp.kernel_ms(e for e in events if not e.name.startswith(PART_RANGE))}
    for part in targets:
        ranges = [e for e in events if e.name == PART_RANGE + part and e.device_type == torch.autograd.DeviceType.CPU]
        outermost = [e for e in ranges if not _inside(e, PART_RANGE + part)]
        result[part] = sum(e.device_time_total for e in outermost) / 1e3
    return result


def _inside(event, name: str) -> bool:
    parent = event.cpu_parent
    while parent is not None:
        if parent.name == name:
            return True
        parent = parent.cpu_parent
    return False


# ----------------------------------------------------------------------------- one row (child process)
def stage(args: argparse.Namespace, device: torch.device):
    """(dataset, batches on ``device``, grid facts): bench_pretrain's dense frames and grid."""
    data = bp.write_frames(Path(args.data), args.frames, "dense")
    cfg = bp.data_cfg(data, quick=args.small)
    workers = 0 if args.small else min(8, os.cpu_count() or 1)
    dataset, batches = bp.stage_batches(cfg, args.batch_size, device, workers, max_batches=args.batches)
    grid = {"point_cloud_range": cfg.POINT_CLOUD_RANGE, "voxel_size": cfg.DATA_PROCESSOR[-1]["VOXEL_SIZE"],
            "grid_size": [int(g) for g in dataset.grid_size],
            "voxels_per_batch": [int(b["voxel_coords"].shape[0]) for b in batches]}
    return dataset, batches, grid


def measure(row: str, args: argparse.Namespace) -> dict:
    """First step (seconds, wall), then ``args.warmup`` steps, one step with its conv ops timed, and
    the median of ``args.steps`` steps (ms); tuner calls are counted throughout."""
    spec = ROWS[row]
    device = torch.device(args.device)
    ops = importlib.import_module("spconv.pytorch.ops")
    if spec.python_tuner:
        ops.SPCONV_CPP_GEMM = False  # read by the ops at call time: they take spconv's Python tuner
    dataset, batches, grid = stage(args, device)
    torch.manual_seed(0)
    cfg = bp.row_config(args.model)
    model = bp.build_model(args.model, cfg, dataset).to(device).train()
    trainer = bp.make_trainer(model, cfg, batches, device, spec.amp, epochs=args.warmup + args.steps + 2)
    state = TrainState()
    timer = bp.Timer(device)

    def step(i: int) -> None:
        trainer.train_step(batches[i % len(batches)], state)
        state.it += 1

    tune, conv_first, conv_warm, rules_warm = Tally(), Tally(), Tally(), Tally()
    with timed_calls(tune_targets(), tune, timer.sync):
        with timed_calls(conv_targets(), conv_first, timer.sync):
            timer.sync()
            start = time.perf_counter()
            step(0)
            timer.sync()
            first_s = time.perf_counter() - start
        first_tune = tune.as_dict()
        for i in range(args.warmup):
            step(1 + i)
        with timed_calls(conv_targets(), conv_warm, timer.sync), \
                timed_calls(conv_targets(RULEBOOK_OPS), rules_warm, timer.sync):  # syncs: not in timed steps
            step(1 + args.warmup)
        steady = timer(lambda i: step(2 + args.warmup + i), 0, args.steps)
        parts = host_targets(model, trainer.scaler)
        host = host_step(lambda: step(2 + args.warmup + args.steps), timer.sync, parts)
        device_ms = device_step(lambda: step(3 + args.warmup + args.steps), parts) if device.type == "cuda" else None
    constants = importlib.import_module("spconv.constants")
    kind = tuner_kind(device)
    blind = kind == "c++"  # the C++ tuner never calls the Python methods
    return {"row": row, "precision": "amp" if spec.amp else "fp32", "tuner": kind,
            "bwd_splitk": list(constants.SPCONV_BWD_SPLITK), "cpp_gemm": bool(ops.SPCONV_CPP_GEMM),
            "cpp_rulebooks": bool(ops.SPCONV_CPP_INDICE_PAIRS_IGEMM),
            "first_s": first_s, "steady_ms": statistics.median(steady), "steady_all_ms": steady,
            "tune_calls": None if blind else first_tune["calls"],
            "tune_s": None if blind else first_tune["seconds"], "tune_by_name": first_tune["by_name"],
            "tune_calls_after_first": tune.calls - first_tune["calls"],
            "conv_first": conv_first.as_dict(), "conv_warm": conv_warm.as_dict(),
            "rules_warm": rules_warm.as_dict(), "host": host, "device_ms": device_ms, "grid": grid}


def child_main(row: str, args: argparse.Namespace) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")
    result = measure(row, args)
    print(RESULT_TAG + json.dumps(result), flush=True)  # the protocol with the parent, not a log line


# ----------------------------------------------------------------------------- rows (parent)
def child_env(row: str, base: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    """The environment of a row's process: ``base`` (default ours) without the variables the rows set,
    plus the row's own."""
    env = {k: v for k, v in (os.environ if base is None else base).items() if k not in CLEARED_ENV}
    env.update(ROWS[row].env)
    return env


def child_command(row: str, args: argparse.Namespace) -> List[str]:
    return [sys.executable, str(Path(__file__).resolve()), "--child", row, "--device", args.device,
            "--batch-size", str(args.batch_size), "--steps", str(args.steps), "--warmup", str(args.warmup),
            "--frames", str(args.frames), "--batches", str(args.batches), "--data", str(args.data),
            "--model", args.model] + (
        ["--small"] if args.small else [])


def run_row(row: str, args: argparse.Namespace) -> dict:
    """One row in a fresh process (an empty spconv tuning cache); its result, or why it has none."""
    if ROWS[row].amp and args.device != "cuda":
        return {"row": row, "skipped": "amp needs CUDA (autocast fp16 + GradScaler)"}
    start = time.perf_counter()
    try:
        proc = subprocess.run(child_command(row, args), env=child_env(row), capture_output=True, text=True,
                              timeout=args.timeout)
    except subprocess.TimeoutExpired:
        return {"row": row, "skipped": f"timed out after {args.timeout} s"}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT_TAG)]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-15:]
        _LOG.error("row %s failed (exit %d):\n%s", row, proc.returncode, "\n".join(tail))
        return {"row": row, "skipped": f"failed (exit {proc.returncode}): {tail[-1] if tail else ''}"}
    result = json.loads(lines[-1][len(RESULT_TAG):])
    result["process_s"] = time.perf_counter() - start
    return result


def add_ratios(rows: List[dict]) -> None:
    """first step / steady step, and the first and the steady step / the ``default`` row's (same run)."""
    base = next((r for r in rows if r["row"] == "default" and "first_s" in r), None)
    for r in rows:
        if "first_s" not in r:
            continue
        r["first_x_steady"] = r["first_s"] * 1e3 / r["steady_ms"]
        r["first_vs_default"] = r["first_s"] / base["first_s"] if base else None
        r["steady_vs_default"] = r["steady_ms"] / base["steady_ms"] if base else None


def _with_rest(parts: Dict[str, Tuple[float, Optional[int]]]) -> Dict[str, Tuple[float, Optional[int]]]:
    """``parts`` plus "rest": the step less its top-level parts (nested parts lie inside those)."""
    parts["rest"] = (parts["step"][0] - sum(parts[k][0] for k in TOP_LEVEL_PARTS if k in parts), None)
    return parts


def host_parts(host: dict) -> Dict[str, Tuple[float, Optional[int]]]:
    """(ms, calls) per part of one host-timed step, "rest" included (the step less the top-level parts)."""
    parts = {"step": (host["step_s"] * 1e3, None)}
    parts.update({k: (v["seconds"] * 1e3, v["calls"]) for k, v in host.items() if isinstance(v, dict)})
    return _with_rest(parts)


def device_parts(device_ms: Dict[str, float]) -> Dict[str, Tuple[float, None]]:
    """(ms, None) per part of one profiled step's kernels (:func:`device_step`), shaped like
    :func:`host_parts`; "rest" is every kernel outside the top-level parts: the backward's, which
    autograd launches from its own thread, and the trainer's own."""
    parts = {"step": (device_ms["total"], None)}
    parts.update({k: (v, None) for k, v in device_ms.items() if k != "total"})
    return _with_rest(parts)


def host_table(rows: List[dict]) -> str:
    """Host ms of one steady step per part (lines) and row (columns), calls per step in brackets, and
    beside it, where measured, the device's kernel ms of another step; indented parts lie inside the
    part above them."""
    rows = [r for r in rows if "host" in r]
    if not rows:
        return "no row has a host time (every row was skipped)"
    columns = []
    for r in rows:
        columns.append((r["row"], host_parts(r["host"])))
        if r.get("device_ms"):
            columns.append((f"{r['row']} device", device_parts(r["device_ms"])))
    lines = [f"{'part':<38}" + "".join(f"{name:>16}" for name, _ in columns)]
    for key, label in HOST_PARTS:
        cells = []
        for _, p in columns:
            ms, calls = p.get(key, (None, None))
            cell = "-" if ms is None else f"{ms:.1f}" + ("" if calls is None else f" ({calls})")
            cells.append(f"{cell:>16}")
        lines.append(f"{label:<38}" + "".join(cells))
    return "\n".join(lines)


def table(rows: List[dict]) -> str:
    def num(value, fmt: str) -> str:
        return "-" if value is None else format(value, fmt)

    lines = [f"{'row':<17}{'tuner':>6}{'first s':>9}{'steady ms':>11}{'first/steady':>13}{'tune calls':>11}"
             f"{'tune s':>8}{'conv first s':>13}{'conv warm ms':>13}{'rules warm ms':>14}{'first x def':>12}"
             f"{'steady x def':>13}"]
    for r in rows:
        if "skipped" in r:
            lines.append(f"{r['row']:<17} skipped: {r['skipped']}")
            continue
        lines.append(f"{r['row']:<17}{r['tuner']:>6}{r['first_s']:>9.2f}{r['steady_ms']:>11.1f}"
                     f"{r['first_x_steady']:>13.1f}{num(r['tune_calls'], 'd'):>11}{num(r['tune_s'], '.2f'):>8}"
                     f"{r['conv_first']['seconds']:>13.2f}{r['conv_warm']['seconds'] * 1e3:>13.1f}"
                     f"{r['rules_warm']['seconds'] * 1e3:>14.1f}{num(r['first_vs_default'], '.2f'):>12}"
                     f"{num(r['steady_vs_default'], '.2f'):>13}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- command line
def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", nargs="+", choices=list(ROWS), default=list(ROWS))
    parser.add_argument("--device", choices=["cuda", "cpu"], default=None, help="default: cuda if available")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--steps", type=int, default=None, help="timed steady steps (median); default 5 (small 3)")
    parser.add_argument("--warmup", type=int, default=None,
                        help="steps between the first and the timed ones; default 2 (small 1)")
    parser.add_argument("--small", action="store_true", help="bench_pretrain's reduced grid (a fast CPU check)")
    parser.add_argument("--frames", type=int, default=None, help="frames to generate (default 2 batches)")
    parser.add_argument("--batches", type=int, default=2, help="batches staged and cycled through")
    parser.add_argument("--data", default=None, help="folder for the generated frames (default: a temp folder)")
    parser.add_argument("--timeout", type=float, default=600, help="seconds per row's process")
    parser.add_argument("--model", choices=bp.ROWS, default="baseline",
                        help="which of bench_pretrain's steps every row times: baseline (the VoxelNeXt encoder "
                             "alone), teacher_off, identical, ema (the EMA teacher every step) or phase2")
    parser.add_argument("--child", choices=list(ROWS), default=None, help=argparse.SUPPRESS)
    add_out_argument(parser)
    args = parser.parse_args(argv)
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    args.steps = args.steps or (3 if args.small else 5)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.small else 2)
    args.frames = args.frames or args.batches * args.batch_size
    if args.data is None:
        args.data = str(Path(tempfile.gettempdir()) / "pcdet_rmae_ts_bench" / f"dense_{args.frames}")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.child:
        child_main(args.child, args)
        return {}
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    device = torch.device(args.device)
    bp.write_frames(Path(args.data), args.frames, "dense")  # once here, not in every row's process
    card = card_name(device)
    results: Dict[str, object] = {"env": bp.environment(device), "batch_size": args.batch_size,
                                  "model": args.model, "small": args.small, "rows": []}
    run_id = None
    for row in args.rows:
        results["rows"].append(run_row(row, args))
        add_ratios(results["rows"])
        _LOG.info("row %s: %s", row, {k: v for k, v in results["rows"][-1].items() if k != "steady_all_ms"})
        # partial results survive a run cut off by a time limit (the run is replaced later)
        run_id = append_run(args.out, "first_step", card, results, label=args.label, run_id=run_id)
    results["grid"] = next((r["grid"] for r in results["rows"] if "grid" in r), None)
    print(f"{card}, {args.model} step, batch {args.batch_size}, {'small' if args.small else 'full'} grid "
          f"{results['grid']}")
    print(table(results["rows"]))  # the tables are this tool's output
    print("host time of one steady step, no sync added: ms (calls); 'device': kernel ms of one more step")
    print(host_table(results["rows"]))
    append_run(args.out, "first_step", card, results, label=args.label, run_id=run_id)
    return results


if __name__ == "__main__":
    main()

"""Where a pretraining step waits for the device: host syncs per step, attributed to source lines.

On CUDA the count is exact: ``torch.cuda.set_sync_debug_mode("warn")`` warns at every synchronising
call, and each warning is traced to the innermost frame of this package, spconv or torch. On the CPU
nothing synchronises, so the script counts the operators that would (``.item()`` / ``bool()`` /
``int()``, ``nonzero``, ``unique``, boolean indexing, ``masked_select``, ``repeat_interleave``) with a
TorchDispatchMode: a proxy. Its one known excess is the optimiser's ``.item()`` on step counters, which
live on the CPU on a GPU too (the ``torch.optim`` area of the table). Neither method sees a sync inside a
C++ library (spconv's own ``cudaStreamSynchronize``); a profile's CUDA runtime calls count those.

    PYTHONPATH=. python benchmarks/count_syncs.py [--rows baseline ema phase2] [--full-grid] [--out FILE|DIR|-]

Each run is added to ``benchmarks/results/syncs_<card>.json`` unless ``--out`` says otherwise.
"""
from __future__ import annotations

import argparse
import collections
import sys
import tempfile
import traceback
import warnings
from pathlib import Path
from typing import Counter, List

import torch
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_pretrain as bp  # noqa: E402
from results_file import add_out_argument, append_run, card_name  # noqa: E402

from pcdet_rmae_ts.engine.trainer import TrainState  # noqa: E402

WOULD_SYNC = {"_local_scalar_dense", "nonzero", "_unique2", "unique_dim", "unique_consecutive", "masked_select",
              "repeat_interleave", "equal", "is_nonzero", "argwhere"}


MACHINERY = ("torch/_dynamo/", "torch/_compile.py", "torch/utils/_python_dispatch", "torch/_ops.py")  # the counter


def _short(frame) -> str:
    path = frame.filename.replace("\\", "/")
    for top in ("pcdet_rmae_ts", "spconv", "torch"):
        if f"/{top}/" in path:
            return f"{path[path.rindex(f'/{top}/') + 1:]}:{frame.lineno}"
    return ""


def _where() -> str:
    """The innermost frame in this package, spconv or torch, with the package line that led there
    (``torch/optim/adam.py:210 <- pcdet_rmae_ts/engine/trainer.py:209``)."""
    frames = [_short(f) for f in reversed(traceback.extract_stack()[:-2])]
    frames = [f for f in frames if f and not f.startswith(MACHINERY)]
    if not frames:
        return "other"
    ours = next((f for f in frames if f.startswith("pcdet_rmae_ts/")), None)
    return frames[0] if ours in (None, frames[0]) else f"{frames[0]} <- {ours}"


def _area(site: str) -> str:
    if site.startswith("torch/optim/"):
        return "torch.optim"
    return site.split("/")[0] if "/" in site else "other"


class ProxyCounter(TorchDispatchMode):
    """CPU proxy: operators that synchronise when their inputs live on a GPU."""

    def __init__(self):
        super().__init__()
        self.sites: Counter[str] = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        boolean_index = name in ("index", "index_put", "index_put_") and any(
            isinstance(t, torch.Tensor) and t.dtype == torch.bool for t in (args[1] or []) if t is not None)
        if name in WOULD_SYNC or boolean_index:
            self.sites[f"{_where()} {name}{'(bool)' if boolean_index else ''}"] += 1
        return func(*args, **(kwargs or {}))


# what torch's sync debug mode warns at a synchronising call (c10::cuda::warn_or_error_on_sync); matching
# only "synchronizing" would also count set_sync_debug_mode's own "prototype feature ... does not yet detect
# all synchronizing operations" warning (once per process, so in a run's first row) as a sync at
# torch/cuda/__init__.py
SYNC_WARNING = "called a synchronizing CUDA operation"


def count_cuda(step) -> Counter[str]:
    """Exact: every synchronising call during ``step()`` warns once; the warning is traced to its site."""
    sites: Counter[str] = collections.Counter()
    original = warnings.showwarning

    def record(message, category, filename, lineno, file=None, line=None):
        if SYNC_WARNING in str(message):
            sites[_where()] += 1
        else:
            original(message, category, filename, lineno, file, line)

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = record
        torch.cuda.set_sync_debug_mode("warn")
        try:
            step()
            torch.cuda.synchronize()
        finally:
            torch.cuda.set_sync_debug_mode("default")
            warnings.showwarning = original
    return sites


def count_row(row: str, batches: list, dataset, device: torch.device) -> dict:
    cfg = bp.row_config(row)
    model = bp.build_model(row, cfg, dataset).to(device).train()
    trainer = bp.make_trainer(model, cfg, batches, device, amp=False, epochs=2)
    state = TrainState()
    trainer.train_step(batches[0], state)  # warm-up: spconv's tuning and first allocations
    state.it += 1

    def step():
        trainer.train_step(batches[1 % len(batches)], state)

    if device.type == "cuda":
        sites = count_cuda(step)
    else:
        with ProxyCounter() as counter:
            step()
        sites = counter.sites
    by_area: Counter[str] = collections.Counter()
    for site, n in sites.items():
        by_area[_area(site)] += n
    return {"row": row, "exact": device.type == "cuda", "total": sum(sites.values()), "by_area": dict(by_area),
            "sites": dict(sites.most_common())}


def table(rows: List[dict], top: int) -> str:
    lines = []
    for r in rows:
        kind = "syncs (exact)" if r["exact"] else "would-sync operators (CPU proxy)"
        areas = ", ".join(f"{k} {v}" for k, v in sorted(r["by_area"].items(), key=lambda kv: -kv[1]))
        lines.append(f"{r['row']}: {r['total']} {kind} per step ({areas})")
        lines.extend(f"    {n:>4}  {site}" for site, n in list(r["sites"].items())[:top])
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", nargs="+", default=["baseline", "ema", "phase2"])
    parser.add_argument("--full-grid", action="store_true", help="the user's grid (default: a small grid)")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--top", type=int, default=12, help="sites listed per row")
    add_out_argument(parser)
    args = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    root = Path(tempfile.mkdtemp(prefix="count_syncs_"))
    data = bp.write_frames(root / "frames", 2 * args.batch_size, "dense")
    dataset, batches = bp.stage_batches(bp.data_cfg(data, quick=not args.full_grid), args.batch_size, device,
                                        workers=0, max_batches=2)
    rows = [count_row(row, batches, dataset, device) for row in args.rows]
    print(f"{card_name(device)}, batch {args.batch_size}, {'full' if args.full_grid else 'small'} grid")
    print(table(rows, args.top))
    append_run(args.out, "syncs", card_name(device), {"rows": rows}, label=args.label,
               batch_size=args.batch_size, full_grid=args.full_grid)


if __name__ == "__main__":
    main()

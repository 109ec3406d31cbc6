"""One results file per benchmark and card: ``benchmarks/results/<benchmark>_<card>.json``.

A file is ``{"benchmark": ..., "card": ..., "runs": [run, ...]}``; each run is
``{"run_id", "card", "commit", "commit_source", "dirty", "command", "date", "label", "results"}``
with the benchmark's own payload unchanged under ``results``. The benchmark scripts call::

    from results_file import add_out_argument, append_run, card_name
    add_out_argument(parser)                       # --out (default benchmarks/results/) and --label
    append_run(args.out, "pretrain", card_name(device), payload, label=args.label)

``--out`` may name a folder (the file ``<benchmark>_<card>.json`` in it), a file, or ``-`` (write
nothing). On the accelerator machine the suite appends to ``$OUT/`` and the files come back; add
their runs to the repository's files with ``python benchmarks/results_file.py merge FILE...``.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shlex
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Optional, Union

RESULTS_DIR = Path(__file__).resolve().parent / "results"
_VENDOR_WORDS = {"nvidia", "geforce", "tesla", "amd", "radeon", "instinct"}


def card_name(device=None) -> str:
    """``torch.cuda.get_device_name`` of a CUDA ``device`` (e.g. 'NVIDIA H100 80GB HBM3'), else
    'CPU <n>-core' (the host's CPU count)."""
    if device is not None and getattr(device, "type", str(device).split(":")[0]) == "cuda":
        import torch
        return torch.cuda.get_device_name(device)
    return f"CPU {os.cpu_count()}-core"


def card_slug(card: str) -> str:
    """File-name part of a card: 'NVIDIA H100 80GB HBM3' -> 'h100', 'CPU 2-core' -> 'cpu_2core'."""
    m = re.fullmatch(r"CPU (\d+)-core", card)
    if m:
        return f"cpu_{m.group(1)}core"
    words = [w for w in re.findall(r"[a-z0-9]+", card.lower()) if w not in _VENDOR_WORDS] or ["unknown"]
    slug = words[0]
    if not any(c.isdigit() for c in slug) and len(words) > 1:  # 'RTX 4090' -> 'rtx4090'
        slug += words[1]
    return slug


def results_path(out: Union[str, Path, None], benchmark: str, card: str) -> Optional[Path]:
    """Where a run goes: ``None`` for '-'; ``<out>/<benchmark>_<card>.json`` when ``out`` is a
    folder (existing, or written with a trailing '/'), ``out`` itself otherwise; default
    ``benchmarks/results/``."""
    if out == "-":
        return None
    if out is None or str(out).endswith(("/", os.sep)) or Path(out).is_dir():
        return Path(out or RESULTS_DIR) / f"{benchmark}_{card_slug(card)}.json"
    return Path(out)


def git_commit() -> tuple:
    """(HEAD commit, working tree has uncommitted changes) of the repository, (None, None) outside one."""
    cwd = Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True,
                              check=True).stdout.strip()
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                                capture_output=True, text=True, check=True).stdout
        return head, bool(status.strip())
    except (OSError, subprocess.CalledProcessError):
        return None, None


def command_line() -> str:
    """This process's command: ``sys.argv`` after ``python``, or after ``torchrun --nproc_per_node N``
    when torchrun started it (its other options are not visible to the process)."""
    if "TORCHELASTIC_RUN_ID" in os.environ or "LOCAL_WORLD_SIZE" in os.environ:
        launcher = ["torchrun", "--nproc_per_node", os.environ.get("LOCAL_WORLD_SIZE", "?")]
    else:
        launcher = ["python"]
    return shlex.join(launcher + sys.argv)


def load(path: Union[str, Path]) -> dict:
    return json.loads(Path(path).read_text())


def _write(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=float) + "\n")
    os.replace(tmp, path)  # a reader never sees half a file


def add_runs(path: Union[str, Path], benchmark: str, card: str, runs: list) -> None:
    """Add ``runs`` to the file at ``path`` (made if missing); a run whose ``run_id`` is already
    there replaces that one in place."""
    path = Path(path)
    data = load(path) if path.exists() else {"benchmark": benchmark, "card": card, "runs": []}
    if (data["benchmark"], data["card"]) != (benchmark, card):
        raise ValueError(f"{path} holds {data['benchmark']} on {data['card']}, not {benchmark} on {card}")
    index = {r.get("run_id"): i for i, r in enumerate(data["runs"])}
    for run in runs:
        if run.get("run_id") in index:
            data["runs"][index[run["run_id"]]] = run
        else:
            data["runs"].append(run)
    _write(path, data)


def append_run(out: Union[str, Path, None], benchmark: str, card: str, payload: dict, *,
               label: Optional[str] = None, run_id: Optional[str] = None, **fields) -> Optional[str]:
    """Append one run (card, commit, command = this process's argv, date, ``label``, ``fields``,
    ``payload`` under ``results``) to the file :func:`results_path` picks; returns the run id.
    Pass the returned id back as ``run_id`` to replace that run (partial results of a long run)."""
    path = results_path(out, benchmark, card)
    if path is None:
        return None
    commit, dirty = git_commit()
    run = {"run_id": run_id or uuid.uuid4().hex[:12], "card": card, "commit": commit,
           "commit_source": "git rev-parse HEAD at run time", "dirty": dirty, "command": command_line(),
           "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "label": label, **fields, "results": payload}
    add_runs(path, benchmark, card, [run])
    return run["run_id"]


def add_out_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default=None,
                        help="results file to append this run to, or a folder for <benchmark>_<card>.json "
                             "(default: benchmarks/results/); '-': write nothing")
    parser.add_argument("--label", default=None, help="a name for this run in the results file")


def merge(sources: list, into: Union[str, Path] = RESULTS_DIR) -> None:
    """Add the runs of results files (e.g. brought back from the accelerator machine's ``$OUT``) to
    the files of the same benchmark and card in ``into``; runs already there (same run_id) are kept once."""
    for src in sources:
        data = load(src)
        target = Path(into) / f"{data['benchmark']}_{card_slug(data['card'])}.json"
        add_runs(target, data["benchmark"], data["card"], data["runs"])
        print(f"{src}: {len(data['runs'])} runs -> {target}")


if __name__ == "__main__":
    cli = argparse.ArgumentParser(description="Add the runs of results files to benchmarks/results/.")
    sub = cli.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("merge", help="merge runs of FILE... into the per-benchmark-per-card files")
    m.add_argument("files", nargs="+")
    m.add_argument("--into", default=str(RESULTS_DIR))
    a = cli.parse_args()
    merge(a.files, a.into)

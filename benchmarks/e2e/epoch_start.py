"""Epoch-start cost of fine-tuning through ``scripts/dist_train.sh``: DataLoader workers started with
``spawn`` (what OpenPCDet's ``init_dist_pytorch`` picks) against ``fork`` (what our launchers pick).

For each start method it runs the user's command, reads its console lines as they arrive, and takes
the time from "Start training" to the first iteration of each epoch (OpenPCDet logs iteration 0 of
every epoch); the run is stopped once "End training" appears (the end-of-training evaluation is
not part of this measurement). Prints a table and writes JSON.

    python benchmarks/e2e/epoch_start.py --data data/flow_small --out benchmarks/results/e2e/epoch_start_h200.json
"""
from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
FT_CFG = "cfgs/custom_models/rmae_cmae_isarc_4class_finetune_phase1.yaml"
FIRST_ITER = re.compile(r"Train:\s+(\d+)/(\d+) .*\[\s*0/(\d+)")
DATA_TIME = re.compile(r"Data time: ([0-9.]+)\(")


def measure(method: str, data: str, epochs: int, batch_size: int, workers: int, log_path: Path) -> dict:
    """Seconds from "Start training" to iteration 0 of each epoch for one start method."""
    env = dict(os.environ, PCDET_RMAE_TS_START_METHOD=method, PYTHONUNBUFFERED="1")
    cmd = ["bash", "scripts/dist_train.sh", "1", "--cfg_file", FT_CFG, "--batch_size", str(batch_size),
           "--epochs", str(epochs), "--workers", str(workers), "--extra_tag", f"epoch_start_{method}",
           "--set", "DATA_CONFIG.DATA_PATH", data]
    t_launch = time.time()
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    t_start, firsts, waits = None, [], []
    with open(log_path, "w") as log:
        for line in proc.stdout:
            now = time.time()
            log.write(line)
            if "Start training" in line and t_start is None:
                t_start = now
            elif t_start is not None and FIRST_ITER.search(line):
                firsts.append(now - t_start)
                waits.append(float(DATA_TIME.search(line).group(1)))
            elif "End training" in line:
                os.killpg(proc.pid, signal.SIGTERM)
                break
    proc.wait()
    if t_start is None or len(firsts) < epochs:
        raise RuntimeError(f"{method}: the run did not reach {epochs} epochs; see {log_path}")
    return {"method": method, "launch_to_start_s": round(t_start - t_launch, 1),
            "first_iteration_s": [round(x, 1) for x in firsts],
            "epoch_gaps_s": [round(b - a, 1) for a, b in zip(firsts, firsts[1:])],
            "first_batch_wait_s": waits}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="CustomDataset folder with infos (create_infos.py)")
    parser.add_argument("--methods", nargs="+", default=["spawn", "fork"])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--workers", type=int, default=4, help="OpenPCDet's default")
    parser.add_argument("--out", required=True, help="JSON file")
    args = parser.parse_args()
    import torch

    card = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    rows = []
    for method in args.methods:
        rows.append(measure(method, args.data, args.epochs, args.batch_size, args.workers,
                            Path(args.out).with_name(f"epoch_start_{method}.log")))
        Path(args.out).write_text(json.dumps({"card": card, "workers": args.workers, "rows": rows}, indent=2))
    print(f"{card}, {args.workers} workers, {args.epochs} epochs\n"
          "| start method | Start training -> first iteration (s) | wait for each epoch's first batch (s) | "
          "epoch to epoch (s) |\n| --- | --- | --- | --- |")
    for row in rows:
        print(f"| {row['method']} | {row['first_iteration_s'][0]} | {row['first_batch_wait_s']} | "
              f"{row['epoch_gaps_s']} |")
    sys.stdout.flush()


if __name__ == "__main__":
    main()

"""Extra cost of the Phase 2 teacher-student losses per training step (forward + backward +
optimizer step + EMA update) on the demo configs, Phase 1 vs Phase 2, on the same batches.

Usage (package installed, or PYTHONPATH=.): ``python benchmarks/bench_phase2_cost.py [--steps 8]
[--device cpu] [--data-path /tmp/rmae_demo]``. Phases alternate step by step so that machine load
hits both alike. A third run, Phase 1 with the teacher forward every step, separates the cost of
the teacher's complete-scene forward (which Phase 2 needs every step) from the losses.
Reports the median wall and CPU (process) seconds per step, and adds the run to
``benchmarks/results/phase2_cost_<card>.json`` (``--out FILE|DIR``, ``-`` for none).
"""
from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from pathlib import Path

import torch

from pcdet_rmae_ts.config import PACKAGE_ROOT, cfg_from_yaml_file, resolve_loss_config
from pcdet_rmae_ts.data import build_dataloader
from pcdet_rmae_ts.data.synthetic import ensure_dataset
from pcdet_rmae_ts.engine.batch import batch_to_device
from pcdet_rmae_ts.models.backbone import LossWeights
from pcdet_rmae_ts.models.pretrain_model import PretrainModel

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_file import add_out_argument, append_run, card_name  # noqa: E402

_LOG = logging.getLogger("bench_phase2_cost")
CONFIGS = {"phase1": "cfgs/demo/rmae_cmae_demo_pretraining.yaml",
           "phase1_teacher_every_step": "cfgs/demo/rmae_cmae_demo_pretraining.yaml",
           "phase2": "cfgs/demo/rmae_cmae_demo_pretraining_phase2.yaml"}


def build(name: str, data_path: str, device: torch.device):
    cfg = cfg_from_yaml_file(PACKAGE_ROOT / CONFIGS[name])
    cfg.DATA_CONFIG.DATA_PATH = data_path
    if name == "phase1_teacher_every_step":  # splits Phase 2's extra into teacher forward vs losses
        cfg.MODEL.BACKBONE_3D.TEACHER_LOG_INTERVAL = 1
    ensure_dataset(data_path, frames=int(cfg.DATA_CONFIG.SYNTHETIC.FRAMES), seed=0, profile="demo")
    dataset, loader, _ = build_dataloader(cfg.DATA_CONFIG, cfg.CLASS_NAMES, int(cfg.OPTIMIZATION.BATCH_SIZE_PER_GPU),
                                          workers=0, training=True)
    weights = resolve_loss_config(cfg)
    torch.manual_seed(0)
    model = PretrainModel(cfg.MODEL, dataset.point_feature_encoder.num_point_features, dataset.grid_size,
                          dataset.voxel_size, dataset.point_cloud_range,
                          LossWeights(weights["RMAE_WEIGHT"], weights["TEACHER_STUDENT_WEIGHT"]), weights)
    model.to(device).train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    return model, optimizer, loader


def step(model, optimizer, batch, device) -> tuple:
    wall, cpu = time.perf_counter(), time.process_time()
    loss, _ = model(batch)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    model.after_optimizer_step(progress=0.5)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--data-path", default="/tmp/rmae_demo_bench")
    add_out_argument(parser)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    device = torch.device(args.device)
    runs = {name: build(name, args.data_path, device) for name in CONFIGS}
    batches = [batch_to_device(b, device) for _, b in zip(range(args.steps + 1), runs["phase1"][2])]
    times = {name: [] for name in CONFIGS}
    for i, batch in enumerate(batches):
        for name, (model, optimizer, _) in runs.items():
            result = step(model, optimizer, dict(batch), device)
            if i > 0:  # the first step warms caches up
                times[name].append(result)
    report = {}
    for name, values in times.items():
        report[name] = {"wall_s": statistics.median(v[0] for v in values),
                        "cpu_s": statistics.median(v[1] for v in values)}
    report["extra_wall_s"] = report["phase2"]["wall_s"] - report["phase1"]["wall_s"]
    report["extra_wall_pct"] = 100 * report["extra_wall_s"] / report["phase1"]["wall_s"]
    report["extra_cpu_pct"] = 100 * (report["phase2"]["cpu_s"] / report["phase1"]["cpu_s"] - 1)
    report.update(steps=args.steps, device=str(device), threads=torch.get_num_threads())
    print(json.dumps(report, indent=2))  # noqa: T201 (a benchmark's result on stdout)
    append_run(args.out, "phase2_cost", card_name(device), report, label=args.label)


if __name__ == "__main__":
    main()

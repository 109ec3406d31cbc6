"""CPU time of one pretraining forward+backward of the backbone at the user's grid.

One dense synthetic frame (range [-70.4,-70.4,-6,70.4,70.4,10], voxel [0.1,0.1,0.2],
~100k+ voxels), the seed pretraining BACKBONE_3D (default VoxelNeXt channels), teacher
off / identical / ema. Prints a table with each row's ratio to "teacher off".

    PYTHONPATH=. python benchmarks/cpu_backbone_step.py [--repeats 3] [--out FILE|DIR|-]

Each run is added to ``benchmarks/results/cpu_backbone_step_cpu_<n>core.json`` unless ``--out`` says otherwise.
"""
from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import numpy as np
import torch

from pcdet_rmae_ts.config import cfg_from_yaml_file
from pcdet_rmae_ts.data.processor import DataProcessor
from pcdet_rmae_ts.data.synthetic import generate_frame
from pcdet_rmae_ts.models.backbone import LossWeights, RMAECMAEBackbonePhase1

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_file import add_out_argument, append_run, card_name  # noqa: E402

RANGE = np.array([-70.4, -70.4, -6, 70.4, 70.4, 10], dtype=np.float32)
CFG = "cfgs/custom_models/rmae_cmae_isarc_4class_pretraining_phase1.yaml"


def voxelise(seed: int):
    points, _, _ = generate_frame(np.random.default_rng(seed), "dense")
    processor_cfg = cfg_from_yaml_file(CFG).DATA_CONFIG.DATA_PROCESSOR
    processor = DataProcessor(processor_cfg, RANGE, training=True, num_point_features=4)
    data = processor({"points": points}, np.random.default_rng(0), source="synthetic")
    voxels = torch.from_numpy(data["voxels"])
    counts = torch.from_numpy(data["voxel_num_points"]).clamp(min=1).float()
    features = voxels.sum(1) / counts[:, None]
    coords = torch.from_numpy(data["voxel_coords"]).int()
    coords = torch.cat([torch.zeros_like(coords[:, :1]), coords], 1)
    return features, coords, processor.grid_size


def time_step(model, features, coords, repeats: int) -> float:
    times = []
    for i in range(repeats + 1):
        start = time.perf_counter()
        model({"voxel_features": features, "voxel_coords": coords, "batch_size": 1, "global_step": 0})
        loss, _ = model.get_loss(LossWeights())
        loss.backward()
        model.zero_grad(set_to_none=True)
        if i > 0:  # the first call is a warm-up
            times.append(time.perf_counter() - start)
    return float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    add_out_argument(parser)
    args = parser.parse_args()
    features, coords, grid = voxelise(0)
    base_cfg = cfg_from_yaml_file(CFG).MODEL.BACKBONE_3D
    rows = []
    for name, overrides in (("teacher off", {"ENABLE_TEACHER_STUDENT": False}),
                            ("teacher identical", {"TEACHER_BACKBONE_TYPE": "identical", "TEACHER_LOG_INTERVAL": 1}),
                            ("teacher ema", {"TEACHER_BACKBONE_TYPE": "ema", "TEACHER_LOG_INTERVAL": 1})):
        cfg = copy.deepcopy(base_cfg)
        cfg.update(overrides)
        torch.manual_seed(0)
        model = RMAECMAEBackbonePhase1(cfg, 4, grid, [0.1, 0.1, 0.2], RANGE.tolist()).train()
        rows.append((name, time_step(model, features, coords, args.repeats)))
    print(f"voxels: {coords.shape[0]}, torch {torch.__version__}, threads {torch.get_num_threads()}")
    print(f"{'row':<20}{'seconds':>10}{'ratio':>8}")
    for name, seconds in rows:
        print(f"{name:<20}{seconds:>10.2f}{seconds / rows[0][1]:>8.2f}")
    append_run(args.out, "cpu_backbone_step", card_name(None), {"voxels": int(coords.shape[0]), "rows": dict(rows)},
               label=args.label)


if __name__ == "__main__":
    main()

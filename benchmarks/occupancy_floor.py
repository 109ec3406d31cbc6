"""How hard is the occupancy pretext? The loss that featureless predictors reach on the same targets.

R-MAE's student predicts, per coarse cell (stride 8: 0.8 x 0.8 x 1.6 m at the user's grid), whether the
complete scene has a voxel there; the loss is BCE averaged over every in-range cell, visible or masked.
A pretraining loss means little without its floor: what a predictor that learned nothing about the
scene's content would reach. Predictors, fitted on the first half of the frames and scored on the
second half (the same targets, masking and per-sample averaging as training):

  constant        one occupancy probability for every cell
  per_z           one probability per height layer (the ground is at a fixed height)
  per_z_range     one per height layer and 4 m range ring (the sensor's falloff with distance)
  copy+per_z_range  the visible cells copied from the input (their occupancy is in the input; a loss of
                  ~0 there), per_z_range in the masked sectors: geometry plus copying, no content

With ``--ckpt`` a pretrained encoder (``tools/train_rmae_cmae_phase1.py``'s checkpoint of the Phase 1
config) is scored on the same held-out frames, with the masks its own forward drew: the row "pretrained"
is the held-out counterpart of its logged ``loss_rmae`` (e.g. 0.014 after 8 epochs on the H200,
``results/logs/label_efficiency_s3_h200.txt``). The table also gives the positive ratio and the share of
positives in the masked sectors. Usage (CPU is enough without --ckpt; PYTHONPATH=.):
  python benchmarks/occupancy_floor.py --frames 32 --profile hard [--ckpt checkpoint_epoch_8.pth]
"""
from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from pathlib import Path
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_data import CLASSES  # noqa: E402
from bench_pretrain import PHASE1_CFG, data_cfg, row_config, write_frames  # noqa: E402

from pcdet_rmae_ts.config import cfg_from_yaml_file  # noqa: E402
from pcdet_rmae_ts.data import build_dataloader  # noqa: E402
from pcdet_rmae_ts.engine.batch import batch_to_device  # noqa: E402
from pcdet_rmae_ts.engine.checkpoint import load_checkpoint  # noqa: E402
from pcdet_rmae_ts.models.pretrain_model import PretrainModel  # noqa: E402
from pcdet_rmae_ts.occupancy import cell_centres, masked_sector_cells, occupancy_targets, per_sample_mean  # noqa: E402

RING_M = 4.0
EPS = 1e-6


def cell_range_rings(shape, stride: int, voxel_size, point_cloud_range) -> torch.Tensor:
    """(Y', X') long: the 4 m range ring of each coarse BEV cell's centre (sensor at the origin)."""
    ny, nx = shape[-2], shape[-1]
    ys = cell_centres(ny, stride, voxel_size[1], point_cloud_range[1])
    xs = cell_centres(nx, stride, voxel_size[0], point_cloud_range[0])
    return (torch.hypot(ys[:, None], xs[None, :]) / RING_M).long()


def sample_bce(prob: torch.Tensor, target: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
    """(B,) BCE of probabilities averaged over each sample's ``region`` cells (training's reduction)."""
    return per_sample_mean(F.binary_cross_entropy(prob.clamp(EPS, 1 - EPS), target, reduction="none"), region)


def collect(loader, model, batches: int, run_model: bool = False,
            device: Optional[torch.device] = None) -> List[Dict[str, torch.Tensor]]:
    """Per batch: occupancy targets, the valid (in-range) cells and the masked-sector cells; with
    ``run_model``, also the model's occupancy probabilities (its training-mode forward, without gradients:
    the masks are the ones that forward drew)."""
    bb = model.backbone_3d
    stride = bb.occupancy_cfg.stride
    out = []
    for batch in loader:
        size = int(batch["batch_size"])
        prob = None
        if run_model:
            with torch.no_grad():
                model(batch_to_device({k: v for k, v in batch.items() if k != "points"}, device or torch.device("cpu")))
            ret = bb.forward_ret_dict
            coords, mask = ret["coords"].cpu(), ret["mask"]
            prob = torch.sigmoid(ret["occupancy_logits"].float()).cpu()
        else:
            coords = torch.as_tensor(batch["voxel_coords"]).int()
            mask = bb.masker(coords, size)
        target = occupancy_targets(coords, size, bb.sparse_shape, stride)
        valid = bb.occupancy_valid.cpu()[None].expand_as(target)
        masked = valid & masked_sector_cells(mask, size, bb.occupancy_shape[1:], stride, bb.voxel_size,
                                             bb.point_cloud_range).cpu()[:, None]
        out.append({"target": target, "valid": valid, "masked": masked, **({"prob": prob} if run_model else {})})
        if len(out) >= batches:
            break
    return out


def fit_priors(batches, rings: torch.Tensor) -> Dict[str, torch.Tensor]:
    """Occupancy frequencies over the valid cells: overall, per z layer, per (z layer, range ring)."""
    target = torch.cat([b["target"] for b in batches])
    valid = torch.cat([b["valid"] for b in batches]).float()
    pos = (target * valid).sum(0)  # (Z', Y', X')
    count = valid.sum(0)
    nz, nring = target.shape[1], int(rings.max()) + 1
    per_z = pos.sum((1, 2)) / count.sum((1, 2)).clamp(min=1)
    index = (torch.arange(nz)[:, None, None] * nring + rings[None]).flatten()
    ring_pos = torch.zeros(nz * nring).index_add_(0, index, pos.flatten())
    ring_count = torch.zeros(nz * nring).index_add_(0, index, count.flatten())
    per_z_range = (ring_pos / ring_count.clamp(min=1)).view(nz, nring)
    return {"constant": pos.sum() / count.sum(), "per_z": per_z, "per_z_range": per_z_range,
            "per_z_range_grid": per_z_range[torch.arange(nz)[:, None, None], rings[None]]}


def score(batches, priors) -> Dict[str, Dict[str, float]]:
    """Mean BCE over all valid cells and over the masked-sector cells, per predictor."""
    rows: Dict[str, Dict[str, List[torch.Tensor]]] = {}
    for b in batches:
        target, valid, masked = b["target"], b["valid"], b["masked"]
        shape = target.shape
        grid = priors["per_z_range_grid"][None].expand(shape)
        predictions = {
            "constant": priors["constant"].expand(shape),
            "per_z": priors["per_z"][None, :, None, None].expand(shape),
            "per_z_range": grid,
            "copy+per_z_range": torch.where(masked, grid, target),  # visible cells: their own occupancy
        }
        if "prob" in b:
            predictions["pretrained"] = b["prob"]
        for name, prob in predictions.items():
            row = rows.setdefault(name, {"all": [], "masked": []})
            row["all"].append(sample_bce(prob, target, valid))
            row["masked"].append(sample_bce(prob, target, masked))
    return {name: {k: float(torch.cat(v).mean()) for k, v in row.items()} for name, row in rows.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=16, help="half to fit the priors, half to score them")
    parser.add_argument("--profile", default="hard")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--data", default=None, help="folder for the generated frames (default: a temp folder)")
    parser.add_argument("--ckpt", default=None, help="also score this Phase 1 pretraining checkpoint")
    parser.add_argument("--seed", type=int, default=1,
                        help="generator seed (the label-efficiency pool uses 0: another seed gives frames that a "
                             "pretrained encoder never saw)")
    parser.add_argument("--quick", action="store_true", help="a small grid (a quick check, not the user's grid)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.manual_seed(0)
    data = Path(args.data or Path(tempfile.gettempdir())
                / f"pcdet_rmae_ts_occfloor/{args.profile}_{args.frames}_seed{args.seed}")
    write_frames(data, args.frames, args.profile, seed=args.seed)
    data_config = data_cfg(data, quick=args.quick)
    data_config.DATA_AUGMENTOR.AUG_CONFIG_LIST = []  # the frames as generated
    dataset, loader, sampler = build_dataloader(data_config, CLASSES, batch_size=args.batch_size, workers=0,
                                                seed=0, training=True, pin_memory=False)
    sampler.set_epoch(0)
    # a checkpoint is scored with the config it was trained with (the Phase 1 config, teacher as it sets it)
    model = PretrainModel.from_config(cfg_from_yaml_file(PHASE1_CFG) if args.ckpt else row_config("teacher_off"),
                                      dataset)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.ckpt:
        model.load_state_dict(load_checkpoint(Path(args.ckpt))["model_state"])
        model.to(device).train()  # training-mode forward: masking on, as in loss_rmae
    batches = collect(loader, model, -(-args.frames // args.batch_size), run_model=bool(args.ckpt), device=device)
    half = len(batches) // 2
    bb = model.backbone_3d
    rings = cell_range_rings(bb.occupancy_shape, bb.occupancy_cfg.stride, bb.voxel_size, bb.point_cloud_range)
    priors = fit_priors(batches[:half], rings)
    held_out = batches[half:]
    scores = score(held_out, priors)
    target = torch.cat([b["target"] for b in held_out])
    valid = torch.cat([b["valid"] for b in held_out])
    masked = torch.cat([b["masked"] for b in held_out])
    grid = "a small grid (--quick)" if args.quick else "the user's grid"
    print(f"{args.profile} frames at {grid}, stride {bb.occupancy_cfg.stride}, "
          f"coarse grid {tuple(bb.occupancy_shape)}; priors fitted on {half * args.batch_size} frames, "
          f"scored on {len(held_out) * args.batch_size}")
    print(f"positive ratio: {float(target[valid].mean()):.4f} of the valid cells, "
          f"{float(target[masked].mean()):.4f} of the masked-sector cells; masked sectors hold "
          f"{float(target[masked].sum() / target[valid].sum()):.0%} of the positives")
    print(f"{'predictor':<18} {'BCE all cells':>14} {'BCE masked':>11}")
    for name, row in scores.items():
        print(f"{name:<18} {row['all']:>14.4f} {row['masked']:>11.4f}")


if __name__ == "__main__":
    main()

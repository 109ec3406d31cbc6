"""The featureless baselines of benchmarks/occupancy_floor.py: each prior is fitted on the right axes, and
the copy predictor is exact on visible cells and uses the prior only in masked sectors."""
from __future__ import annotations

import torch


def _batch(target: torch.Tensor, masked_x: int) -> dict:
    valid = torch.ones_like(target, dtype=torch.bool)
    masked = torch.zeros_like(valid)
    masked[..., masked_x:] = True  # the right part of the grid lies in masked sectors
    return {"target": target, "valid": valid, "masked": masked}


def test_priors_follow_height_and_range_and_copy_is_exact_where_visible(bench_module):
    floor = bench_module("occupancy_floor")
    z, y, x = 3, 4, 6
    rings = torch.arange(x).expand(y, x) // 3  # two range rings: columns 0-2 and 3-5
    target = torch.zeros(2, z, y, x)
    target[:, 0] = 1.0  # the ground layer is always occupied
    target[:, 1, :, :3] = 1.0  # layer 1 only in the near ring
    batches = [_batch(target, masked_x=4)]
    priors = floor.fit_priors(batches, rings)
    assert torch.allclose(priors["per_z"], torch.tensor([1.0, 0.5, 0.0]))
    assert torch.allclose(priors["per_z_range"], torch.tensor([[1.0, 1.0], [1.0, 0.0], [0.0, 0.0]]))
    assert torch.allclose(priors["constant"], torch.tensor(1.5 / 3))
    scores = floor.score(batches, priors)
    assert scores["per_z_range"]["all"] < 1e-4 < scores["per_z"]["all"] < scores["constant"]["all"]

    noisy = target.clone()
    noisy[:, 2, 0, 0] = 1.0  # one cell no prior can know, in the visible part
    batches = [_batch(noisy, masked_x=4)]
    scores = floor.score(batches, floor.fit_priors([_batch(target, masked_x=4)], rings))
    assert scores["copy+per_z_range"]["all"] < 1e-4 < scores["per_z_range"]["all"]
    assert abs(scores["copy+per_z_range"]["masked"] - scores["per_z_range"]["masked"]) < 1e-6


def test_range_rings_grow_with_distance_from_the_sensor(bench_module):
    floor = bench_module("occupancy_floor")
    rings = floor.cell_range_rings((1, 4, 4), stride=10, voxel_size=[0.2, 0.2, 0.2],
                                   point_cloud_range=[-4.0, -4.0, -1.0, 4.0, 4.0, 1.0])
    # cell centres at +-1 m and +-3 m: 1.41 m (ring 0), 3.16 m (ring 0), 4.24 m (ring 1)
    assert rings.tolist() == [[1, 0, 0, 1], [0, 0, 0, 0], [0, 0, 0, 0], [1, 0, 0, 1]]


def test_the_pretrained_row_is_the_models_own_occupancy_loss_on_its_own_masks(tmp_path, bench_module):
    """The row a --ckpt run adds is what training logs as loss_rmae for the same forward: same targets,
    same masked sectors, same per-sample reduction."""
    floor = bench_module("occupancy_floor")
    from bench_data import CLASSES
    from bench_pretrain import data_cfg, row_config, write_frames

    from pcdet_rmae_ts.data import build_dataloader
    from pcdet_rmae_ts.models.pretrain_model import PretrainModel

    torch.manual_seed(0)
    data_config = data_cfg(write_frames(tmp_path / "frames", 2, "demo"), quick=True)
    data_config.DATA_AUGMENTOR.AUG_CONFIG_LIST = []
    dataset, loader, sampler = build_dataloader(data_config, CLASSES, batch_size=2, workers=0, seed=0,
                                                training=True, pin_memory=False)
    sampler.set_epoch(0)
    model = PretrainModel.from_config(row_config("teacher_off"), dataset).train()
    batches = floor.collect(loader, model, 1, run_model=True)
    logged = float(model.backbone_3d.get_loss()[1]["loss_rmae"])
    rings = floor.cell_range_rings(model.backbone_3d.occupancy_shape, 8, model.backbone_3d.voxel_size,
                                   model.backbone_3d.point_cloud_range)
    scores = floor.score(batches, floor.fit_priors(batches, rings))
    assert abs(scores["pretrained"]["all"] - logged) < 1e-4 * logged
    assert scores["pretrained"]["masked"] != scores["pretrained"]["all"]

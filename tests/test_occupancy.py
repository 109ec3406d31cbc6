"""Coarse occupancy targets, decoder and loss."""
from __future__ import annotations

import pytest
import torch

from pcdet_rmae_ts.occupancy import (
    OccupancyDecoder,
    cells_in_range,
    coarse_shape,
    occupancy_loss,
    occupancy_metrics,
    occupancy_targets,
)


@pytest.mark.parametrize("stride", [4, 8])
@pytest.mark.parametrize("seed", [0, 1])
def test_targets_equal_slow_reference(stride, seed):
    gen = torch.Generator().manual_seed(seed)
    sparse_shape = [41, 100, 90]
    coords = torch.cat([torch.randint(0, 3, (500, 1), generator=gen),
                        torch.randint(0, 41, (500, 1), generator=gen),
                        torch.randint(0, 100, (500, 1), generator=gen),
                        torch.randint(0, 90, (500, 1), generator=gen)], 1).int()
    target = occupancy_targets(coords, 3, sparse_shape, stride)
    shape = coarse_shape(sparse_shape, stride)
    assert target.shape == (3, *shape)
    reference = torch.zeros(3, *shape)
    for b, z, y, x in coords.tolist():
        reference[b, z // stride, y // stride, x // stride] = 1.0
    assert torch.equal(target, reference)


def test_coarse_shape_matches_encoder_stride8_stage():
    # 81 -> 41 -> 21 -> 11 and 1408 -> 704 -> 352 -> 176 through three stride-2 convs
    assert coarse_shape([81, 1408, 1408], 8) == (11, 176, 176)
    assert coarse_shape([41, 256, 256], 8) == (6, 32, 32)


def test_cells_in_range_drops_overhanging_layers():
    valid = cells_in_range((11, 176, 176), 8, [0.1, 0.1, 0.2], [-70.4, -70.4, -6, 70.4, 70.4, 10], "cpu")
    assert valid[:10].all() and not valid[10].any()  # the extra z layer (81 = 80 + 1) lies above the range


def test_loss_averages_per_sample_then_batch():
    logits = torch.zeros(2, 1, 2, 2)
    target = torch.zeros(2, 1, 2, 2)
    target[0] = 1.0
    valid = torch.ones(1, 1, 2, 2, dtype=torch.bool)
    valid[..., 0, 0] = False
    expected = torch.nn.functional.binary_cross_entropy_with_logits(torch.zeros(()), torch.zeros(()))
    torch.testing.assert_close(occupancy_loss(logits, target, valid), expected)


def test_metrics_on_known_predictions():
    logits = torch.tensor([[[[3.0, -3.0, 3.0, -3.0]]]])
    target = torch.tensor([[[[1.0, 1.0, 0.0, 0.0]]]])
    m = occupancy_metrics(logits, target, torch.ones_like(target, dtype=torch.bool))
    assert float(m["occ_acc"]) == 0.5 and float(m["occ_precision"]) == 0.5
    assert float(m["occ_recall"]) == 0.5 and float(m["occ_pos_ratio"]) == 0.5


def test_decoder_predicts_everywhere_including_empty_cells():
    from pcdet_rmae_ts.compat import import_spconv
    spconv = import_spconv()
    decoder = OccupancyDecoder(in_channels=8, num_z=5, source_z=1)
    indices = torch.tensor([[0, 3, 3], [1, 10, 2]], dtype=torch.int32)
    tensor = spconv.SparseConvTensor(torch.randn(2, 8), indices, [16, 16], 2)
    logits = decoder(tensor, 2)
    assert logits.shape == (2, 5, 16, 16)
    assert torch.isfinite(logits).all()


def test_masked_sector_cells_equal_slow_reference():
    import math

    from pcdet_rmae_ts.masking import MaskingConfig, RadialMasker
    from pcdet_rmae_ts.occupancy import masked_sector_cells

    voxel, pcr = [0.4, 0.4, 0.4], [-25.6, -25.6, -3.0, 25.6, 25.6, 3.0]
    gen = torch.Generator().manual_seed(3)
    coords = torch.cat([torch.randint(0, 2, (800, 1), generator=gen), torch.randint(0, 15, (800, 1), generator=gen),
                        torch.randint(0, 128, (800, 2), generator=gen)], 1).int()
    mask = RadialMasker(MaskingConfig(masked_ratio=0.5), voxel, pcr, seed=0)(coords, 2)
    cells = masked_sector_cells(mask, 2, (16, 16), 8, voxel, pcr)
    for b in range(2):
        for iy in range(16):
            for ix in range(16):
                x = (ix + 0.5) * 8 * voxel[0] + pcr[0]
                y = (iy + 0.5) * 8 * voxel[1] + pcr[1]
                az = (math.degrees(math.atan2(y, x)) - float(mask.sector_offset[b])) % 360.0
                sector = min(int(az // mask.sector_width), mask.sector_selected.shape[1] - 1)
                assert bool(cells[b, iy, ix]) == bool(mask.sector_selected[b, sector])

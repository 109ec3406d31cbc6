"""Coarse occupancy targets, decoder and loss."""
from __future__ import annotations

import itertools
import math

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


def _bce(logit: float, target: float, pos_weight: float = 1.0, gamma: float = 0.0) -> float:
    """One cell's (focal) BCE-with-logits, written out: -[w t log p + (1 - t) log(1 - p)] (1 - p_t)^gamma."""
    p = 1.0 / (1.0 + math.exp(-logit))
    loss = -(pos_weight * target * math.log(p) + (1.0 - target) * math.log(1.0 - p))
    p_true = p if target > 0.5 else 1.0 - p
    return loss * (1.0 - p_true) ** gamma


def reference_occupancy_loss(logits, target, valid=None, pos_weight=None, gamma=0.0) -> float:
    """Slow reference: per sample, the mean over its valid cells (0 when it has none); then the batch mean."""
    per_sample = []
    for b in range(logits.shape[0]):
        total, count = 0.0, 0
        for idx in itertools.product(*(range(n) for n in logits.shape[1:])):
            v = True if valid is None else bool(valid[(b if valid.shape[0] > 1 else 0,) + idx])
            if v:
                total += _bce(float(logits[(b,) + idx]), float(target[(b,) + idx]),
                              1.0 if pos_weight is None else pos_weight, gamma)
                count += 1
        per_sample.append(total / max(count, 1))
    return sum(per_sample) / len(per_sample)


def test_loss_averages_per_sample_then_batch_hand_computed():
    # sample 0: cells (logit, target) (2, 1), (-1, 0), (0.5, 0), the 4th cell invalid; sample 1: one valid cell
    logits = torch.tensor([[[[2.0, -1.0], [0.5, 7.0]]], [[[3.0, -2.0], [1.5, 0.25]]]])
    target = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]], [[[0.0, 1.0], [1.0, 0.0]]]])
    valid = torch.tensor([[[[True, True], [True, False]]], [[[False, True], [False, False]]]])
    softplus = lambda x: math.log1p(math.exp(x))  # noqa: E731  BCE(x, 1) = softplus(-x), BCE(x, 0) = softplus(x)
    sample0 = (softplus(-2.0) + softplus(-1.0) + softplus(0.5)) / 3
    sample1 = softplus(2.0)
    expected = (sample0 + sample1) / 2  # not the mean over the 4 valid cells: a sparse sample counts as much
    assert abs(expected - (3 * sample0 + sample1) / 4) > 0.1
    torch.testing.assert_close(occupancy_loss(logits, target, valid), torch.tensor(expected))


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("pos_weight, gamma", [(None, 0.0), (3.0, 0.0), (None, 2.0), (0.5, 1.5)])
@pytest.mark.parametrize("valid_kind", ["none", "broadcast", "per_sample"])
def test_loss_equals_slow_reference(seed, pos_weight, gamma, valid_kind):
    gen = torch.Generator().manual_seed(seed)
    shape = (3, 2, 3, 5)
    logits = torch.randn(shape, generator=gen) * 3
    target = (torch.rand(shape, generator=gen) < 0.3).float()
    valid = None
    if valid_kind == "broadcast":  # what the backbone passes: (1, Z', Y', X'), the in-range cells
        valid = torch.rand((1,) + shape[1:], generator=gen) < 0.6
    elif valid_kind == "per_sample":  # different counts per sample; sample 2 has no valid cell at all
        valid = torch.rand(shape, generator=gen) < torch.tensor([0.8, 0.2, 0.0])[:, None, None, None]
    loss = occupancy_loss(logits, target, valid, pos_weight=pos_weight, focal_gamma=gamma)
    expected = reference_occupancy_loss(logits, target, valid, pos_weight, gamma)
    assert abs(float(loss) - expected) < 1e-5 * max(1.0, expected)


def test_pos_weight_and_focal_gamma_change_the_loss_as_documented():
    logits = torch.tensor([[[[2.0, -1.0, 0.3]]]])
    target = torch.tensor([[[[1.0, 1.0, 0.0]]]])
    plain = float(occupancy_loss(logits, target))
    weighted = float(occupancy_loss(logits, target, pos_weight=4.0))
    pos_part = (math.log1p(math.exp(-2.0)) + math.log1p(math.exp(1.0))) / 3
    assert weighted == pytest.approx(plain + 3.0 * pos_part, rel=1e-6)  # only positives are scaled
    focal = float(occupancy_loss(logits, target, focal_gamma=2.0))
    assert focal == pytest.approx(sum(_bce(x, t, gamma=2.0) for x, t in [(2.0, 1), (-1.0, 1), (0.3, 0)]) / 3)
    assert focal < plain  # confident right answers are down-weighted


def test_loss_ignores_invalid_cells_whatever_their_logits():
    gen = torch.Generator().manual_seed(5)
    logits, target = torch.randn(2, 3, 4, 4, generator=gen), (torch.rand(2, 3, 4, 4, generator=gen) < 0.5).float()
    valid = torch.ones(1, 3, 4, 4, dtype=torch.bool)
    valid[:, 2] = False  # an overhanging z layer
    changed = logits.clone()
    changed[:, 2] = torch.where(target[:, 2] > 0.5, -50.0, 50.0)  # hopelessly wrong outside the range
    torch.testing.assert_close(occupancy_loss(changed, target, valid), occupancy_loss(logits, target, valid))
    torch.testing.assert_close(occupancy_loss(logits, target, valid),
                               occupancy_loss(logits[:, :2].contiguous(), target[:, :2].contiguous()))


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


def reference_cells_in_range(shape, stride, voxel_size, pcr):
    """Loops over every coarse cell: valid iff its metric centre lies below the range's upper bound in x, y and z."""
    out = torch.zeros(shape, dtype=torch.bool)
    for iz, iy, ix in itertools.product(*(range(n) for n in shape)):
        centre = [(i + 0.5) * stride * voxel_size[d] + pcr[d] for d, i in enumerate((ix, iy, iz))]
        assert all(abs(centre[d] - pcr[d + 3]) > 1e-3 for d in range(3)), "fixture: no centre on a bound"
        out[iz, iy, ix] = all(centre[d] < pcr[d + 3] for d in range(3))
    return out


@pytest.mark.parametrize("stride", [4, 8])
@pytest.mark.parametrize("voxel_size, pcr", [
    # x: 113 voxels (not a multiple of 4 or 8), y: 21, z: 13 (+1 overhanging layer); x and y voxels differ
    ([0.2, 0.4, 0.3], [-10.0, -5.0, -2.0, 12.6, 3.4, 1.9]),
    # y: 117 voxels, x: 43, origin off-centre; stride 8 overhangs in x only, stride 4 in y only
    ([0.5, 0.25, 0.2], [3.0, -20.0, -1.0, 24.5, 9.25, 2.0]),
])
def test_cells_in_range_equals_slow_reference_on_non_square_grids(stride, voxel_size, pcr):
    grid = [round((pcr[d + 3] - pcr[d]) / voxel_size[d]) for d in range(3)]  # x, y, z
    sparse_shape = [grid[2] + 1, grid[1], grid[0]]  # OpenPCDet's [z + 1, y, x]
    shape = coarse_shape(sparse_shape, stride)
    assert shape[1] != shape[2]
    expected = reference_cells_in_range(shape, stride, voxel_size, pcr)
    valid = cells_in_range(shape, stride, voxel_size, pcr, torch.device("cpu"))
    assert valid.shape == shape
    assert torch.equal(valid, expected)
    # the fixture exercises the overhang: some, but not all, cells are dropped along x or y
    assert not expected.all() and expected.any()


@pytest.mark.parametrize("source_z", [1, 3])
def test_decoder_places_each_sparse_site_in_its_dense_cell(source_z):
    """With the learned parts replaced by identities the decoder's output is its densified input:
    each site's features land at (b, channel * Z + z, y, x); a site listed twice is summed."""
    from pcdet_rmae_ts.compat import import_spconv
    spconv = import_spconv()
    gen = torch.Generator().manual_seed(source_z)
    channels, ny, nx, batch = 4, 7, 5, 2  # non-square, so a y/x swap cannot go unnoticed
    decoder = OccupancyDecoder(in_channels=channels, num_z=2, source_z=source_z, reduced_channels=channels)
    assert isinstance(decoder.reduce, torch.nn.Module) and isinstance(decoder.head, torch.nn.Module)
    decoder.reduce, decoder.head = torch.nn.Identity(), torch.nn.Identity()
    n = 12
    indices = torch.stack([torch.randint(0, high, (n,), generator=gen) for high in (batch, source_z, ny, nx)], 1)
    indices = torch.cat([indices, indices[:1]])  # one duplicate site
    features = torch.randn(indices.shape[0], channels, generator=gen)
    if source_z == 1:
        tensor = spconv.SparseConvTensor(features, indices[:, [0, 2, 3]].int(), [ny, nx], batch)
    else:
        tensor = spconv.SparseConvTensor(features, indices.int(), [source_z, ny, nx], batch)
    dense = decoder(tensor, batch)
    expected = torch.zeros(batch, channels * source_z, ny, nx)
    for (b, z, y, x), f in zip(indices.tolist(), features):
        for c in range(channels):
            expected[b, c * source_z + z, y, x] += f[c]
    torch.testing.assert_close(dense, expected)

"""Two-stage radial masking: ratios, whole sectors from metric azimuth, per-sample draws."""
from __future__ import annotations

import math

import pytest
import torch
from easydict import EasyDict

from pcdet_rmae_ts.masking import (
    MaskingConfig,
    RadialMasker,
    masking_config_from_cfg,
    rank_within_group,
    sector_index,
    voxel_centres_xy,
)

VOXEL = [0.1, 0.1, 0.2]
RANGE = [-70.4, -70.4, -6.0, 70.4, 70.4, 10.0]


def scene(gen: torch.Generator, batch: int, n: int, r_min=2.0, r_max=70.0, az_range=(0.0, 360.0)):
    """(M, 4) [b, z, y, x] voxel coords of random points in an annulus / angular window."""
    r = torch.sqrt(torch.rand(batch * n, generator=gen) * (r_max**2 - r_min**2) + r_min**2)
    az = torch.deg2rad(torch.rand(batch * n, generator=gen) * (az_range[1] - az_range[0]) + az_range[0])
    x, y = r * torch.cos(az), r * torch.sin(az)
    ix = ((x - RANGE[0]) / VOXEL[0]).long().clamp(0, 1407)
    iy = ((y - RANGE[1]) / VOXEL[1]).long().clamp(0, 1407)
    iz = torch.randint(0, 80, (batch * n,), generator=gen)
    b = torch.arange(batch).repeat_interleave(n)
    return torch.unique(torch.stack([b, iz, iy, ix], 1), dim=0).int()


def masker(**kwargs) -> RadialMasker:
    return RadialMasker(MaskingConfig(**kwargs), VOXEL, RANGE, seed=0)


def slow_sectors(coords, offsets, width):
    """Reference written with a Python loop: sector of every voxel from its metric centre."""
    out = []
    for b, _, iy, ix in coords.tolist():
        x = (ix + 0.5) * VOXEL[0] + RANGE[0]
        y = (iy + 0.5) * VOXEL[1] + RANGE[1]
        az = math.degrees(math.atan2(y, x))
        out.append(int(((az - float(offsets[b])) % 360.0) // width))
    return torch.tensor(out)


@pytest.mark.parametrize("ratio", [0.3, 0.6, 0.8])
@pytest.mark.parametrize("bernoulli", [True, False])
def test_achieved_ratio_matches_target_on_average(ratio, bernoulli):
    gen = torch.Generator().manual_seed(int(ratio * 100) + bernoulli)
    achieved = []
    for seed in range(6):
        m = RadialMasker(MaskingConfig(masked_ratio=ratio, bernoulli=bernoulli, min_kept_voxels=0),
                         VOXEL, RANGE, seed=seed)
        coords = scene(gen, batch=4, n=3000, r_min=12.0)  # mid + far voxels: ratio 0.8 is reachable
        result = m(coords, 4)
        achieved.append(float(result.stats["mask_ratio"]))
    assert abs(sum(achieved) / len(achieved) - ratio) < 0.02


def test_stage1_only_masks_whole_sectors_of_a_one_quadrant_scene():
    """Sectors are judged from metric azimuth around the sensor; a scene in one quadrant has only
    ~9 of 36 sectors non-empty, so an index-based or batch-global implementation fails here."""
    gen = torch.Generator().manual_seed(3)
    m = masker(masked_ratio=0.5, two_stage=False, min_kept_voxels=0)
    fractions = []
    for _ in range(20):
        coords = scene(gen, batch=3, n=2000, r_min=5, r_max=60, az_range=(0.0, 90.0))
        result = m(coords, 3)
        sectors = slow_sectors(coords, result.sector_offset, 10.0)
        for b in range(3):
            rows = coords[:, 0] == b
            masked = ~result.keep[rows]
            for s in sectors[rows].unique():
                in_s = sectors[rows] == s
                assert masked[in_s].all() or (~masked[in_s]).all(), "a sector was partly masked"
            nonempty = sectors[rows].unique()
            masked_sectors = sectors[rows][masked].unique()
            fractions.append(len(masked_sectors) / len(nonempty))
    assert abs(sum(fractions) / len(fractions) - 0.5) < 0.06


def test_sector_index_matches_slow_reference():
    gen = torch.Generator().manual_seed(4)
    coords = scene(gen, batch=2, n=500)
    offsets = torch.tensor([3.0, 7.5])
    xy = voxel_centres_xy(coords, VOXEL, RANGE)
    fast = sector_index(xy, offsets[coords[:, 0].long()], 10.0, 36)
    assert torch.equal(fast, slow_sectors(coords, offsets, 10.0))


def test_identical_samples_in_a_batch_get_different_masks():
    gen = torch.Generator().manual_seed(5)
    one = scene(gen, batch=1, n=4000)
    two = torch.cat([one, one.clone().index_fill_(1, torch.tensor([0]), 1)])
    result = masker(masked_ratio=0.6)(two, 2)
    keep0, keep1 = result.keep[: len(one)], result.keep[len(one):]
    assert not torch.equal(keep0, keep1)
    assert not torch.equal(result.sector_selected[0], result.sector_selected[1])


@pytest.mark.parametrize("bernoulli", [True, False])
def test_band_probabilities_are_honoured_inside_selected_sectors(bernoulli):
    gen = torch.Generator().manual_seed(6)
    probs = (0.3, 0.6, 0.9)
    m = masker(masked_ratio=0.5, band_probs=probs, bernoulli=bernoulli, min_kept_voxels=0)
    coords = scene(gen, batch=2, n=20000, r_min=1.0, r_max=60.0)
    result = m(coords, 2)
    xy = voxel_centres_xy(coords, VOXEL, RANGE)
    dist = torch.linalg.norm(xy, dim=1)
    band = (dist > 10).long() + (dist > 30).long()
    sector = sector_index(xy, result.sector_offset[coords[:, 0].long()], 10.0, 36)
    selected = result.sector_selected[coords[:, 0].long(), sector]
    assert result.keep[~selected].all(), "voxels outside selected sectors must be kept"
    for b in range(2):
        for i, p in enumerate(probs):
            rows = selected & (band == i) & (coords[:, 0] == b)
            frac = float((~result.keep[rows]).float().mean())
            if bernoulli:
                assert abs(frac - p) < 0.05
            else:
                assert int((~result.keep[rows]).sum()) == round(int(rows.sum()) * p)


def test_deterministic_for_a_fixed_generator():
    gen = torch.Generator().manual_seed(7)
    coords = scene(gen, batch=2, n=3000)
    m = masker()
    a = m(coords, 2, generator=torch.Generator().manual_seed(11))
    b = m(coords, 2, generator=torch.Generator().manual_seed(11))
    c = m(coords, 2, generator=torch.Generator().manual_seed(12))
    assert torch.equal(a.keep, b.keep) and not torch.equal(a.keep, c.keep)


def test_masker_state_round_trip_resumes_the_same_masks():
    gen = torch.Generator().manual_seed(8)
    coords = scene(gen, batch=2, n=2000)
    m = masker()
    state = m.state_dict()
    first = m(coords, 2).keep
    other = masker()
    other.load_state_dict(state)
    assert torch.equal(other(coords, 2).keep, first)


def test_empty_and_single_voxel_samples_and_floor():
    gen = torch.Generator().manual_seed(9)
    big = scene(gen, batch=1, n=5000)
    single = torch.tensor([[2, 10, 700, 900]], dtype=torch.int32)
    coords = torch.cat([big, single])  # sample 1 is empty, sample 2 has one voxel
    result = masker(masked_ratio=0.95, band_probs=(1.0, 1.0, 1.0), min_kept_voxels=32)(coords, 3)
    assert result.keep[-1], "a single-voxel sample keeps its voxel (floor)"
    assert int(result.keep[: len(big)].sum()) >= 32
    empty = masker()(torch.zeros(0, 4, dtype=torch.int32), 2)
    assert empty.keep.numel() == 0


def test_zero_ratio_is_identity():
    gen = torch.Generator().manual_seed(10)
    coords = scene(gen, batch=2, n=1000)
    assert masker(masked_ratio=0.0)(coords, 2).keep.all()


def test_unreachable_ratio_uses_all_sectors_and_logs_once(caplog):
    gen = torch.Generator().manual_seed(11)
    coords = scene(gen, batch=2, n=2000, r_min=1, r_max=9)  # all NEAR (p = 0.5) < 0.8
    m = masker(masked_ratio=0.8, min_kept_voxels=0)
    with caplog.at_level("WARNING"):
        result = m(coords, 2)
        m(coords, 2)
    assert result.sector_selected.all()
    assert sum("cannot reach MASKED_RATIO" in r.message for r in caplog.records) == 1


def test_config_keys_and_alias():
    cfg = masking_config_from_cfg(EasyDict(ANGULAR_RANGE=5, MASKED_RATIO=0.7))
    assert cfg.num_sectors == 72 and cfg.sector_width == 5.0
    with pytest.raises(ValueError, match="must equal 360"):
        masking_config_from_cfg(EasyDict(NUM_ANGULAR_GROUPS=30, ANGULAR_GROUP_SIZE=10))
    with pytest.raises(ValueError, match="unknown band"):
        masking_config_from_cfg(EasyDict(RANGE_MASK_PROBS={"NEAR": 0.5, "FARR": 0.9}))


def test_rank_within_group_is_a_permutation_per_group():
    group = torch.tensor([2, 0, 2, 1, 2, 0])
    ranks = rank_within_group(group, 3, torch.Generator().manual_seed(0))
    for g in range(3):
        assert sorted(ranks[group == g].tolist()) == list(range(int((group == g).sum())))


def test_per_sample_statistics_equal_a_slow_count():
    gen = torch.Generator().manual_seed(12)
    coords = scene(gen, batch=3, n=3000, r_min=1.0, r_max=60.0)
    result = masker(masked_ratio=0.5, min_kept_voxels=0)(coords, 4)  # sample 3 is empty
    xy = voxel_centres_xy(coords, VOXEL, RANGE)
    dist = torch.linalg.norm(xy, dim=1)
    band = (dist > 10).long() + (dist > 30).long()
    for b in range(4):
        rows = coords[:, 0] == b
        expected = float((~result.keep[rows]).float().mean()) if bool(rows.any()) else 0.0
        assert float(result.sample_ratio[b]) == pytest.approx(expected)
        for i in range(3):
            in_band = rows & (band == i)
            want = float((~result.keep[in_band]).float().mean()) if bool(in_band.any()) else 0.0
            assert float(result.sample_band_ratio[b, i]) == pytest.approx(want)
    assert float(result.stats["mask_ratio"]) == pytest.approx(float((~result.keep).float().mean()))

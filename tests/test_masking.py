"""Two-stage radial masking: sector counts (``sectors``) and unbiased voxel ratios (``voxels``),
whole sectors from metric azimuth on any grid, band probabilities, per-sample draws, resume."""
from __future__ import annotations

import math

import pytest
import torch
from easydict import EasyDict

from pcdet_rmae_ts import masking
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
# non-square voxels, a grid that does not divide its range evenly, the sensor off the grid centre
ODD_VOXEL = [0.15, 0.35, 0.2]
ODD_RANGE = [-30.1, -12.7, -3.0, 45.3, 20.9, 5.0]
SIGMAS = 5.0  # tolerance of statistical checks: a correct implementation fails ~1 in 1.7 million


def scene(gen: torch.Generator, batch: int, n: int, r_min=2.0, r_max=70.0, az_range=(0.0, 360.0),
          voxel=VOXEL, pcr=RANGE):
    """(M, 4) [b, z, y, x] voxel coords of random points in an annulus / angular window (area-uniform)."""
    r = torch.sqrt(torch.rand(batch * n, generator=gen) * (r_max**2 - r_min**2) + r_min**2)
    az = torch.deg2rad(torch.rand(batch * n, generator=gen) * (az_range[1] - az_range[0]) + az_range[0])
    return to_coords(gen, r * torch.cos(az), r * torch.sin(az), torch.arange(batch).repeat_interleave(n), voxel, pcr)


def to_coords(gen, x, y, b, voxel=VOXEL, pcr=RANGE):
    """Voxel coords of metric points, OpenPCDet's grid (round((max - min) / size) cells per axis)."""
    nx, ny = round((pcr[3] - pcr[0]) / voxel[0]), round((pcr[4] - pcr[1]) / voxel[1])
    inside = (x >= pcr[0]) & (x < pcr[0] + nx * voxel[0]) & (y >= pcr[1]) & (y < pcr[1] + ny * voxel[1])
    ix = ((x - pcr[0]) / voxel[0]).long().clamp(0, nx - 1)
    iy = ((y - pcr[1]) / voxel[1]).long().clamp(0, ny - 1)
    iz = torch.randint(0, 40, (x.shape[0],), generator=gen)
    return torch.unique(torch.stack([b, iz, iy, ix], 1)[inside], dim=0).int()


def near_scene(gen: torch.Generator, batch: int, n: int, az_ranges):
    """Mostly-near scans like the real ones (85 % of the points within 10 m), sample b in az_ranges[b]."""
    parts = []
    for b, (lo, hi) in enumerate(az_ranges):
        near = int(0.85 * n)
        r = torch.cat([torch.rand(near, generator=gen) * 9.0 + 1.0, torch.rand(n - near, generator=gen) * 40 + 10])
        az = torch.deg2rad(torch.rand(n, generator=gen) * (hi - lo) + lo)
        parts.append(to_coords(gen, r * torch.cos(az), r * torch.sin(az), torch.full((n,), b)))
    assert len(parts) == batch
    return torch.cat(parts)


def masker(**kwargs) -> RadialMasker:
    return RadialMasker(MaskingConfig(**kwargs), VOXEL, RANGE, seed=0)


def metric_centre(ix, iy, voxel, pcr):
    return (ix + 0.5) * voxel[0] + pcr[0], (iy + 0.5) * voxel[1] + pcr[1]


def slow_sectors(coords, offsets, width, voxel=VOXEL, pcr=RANGE):
    """Reference written with a Python loop: sector of every voxel from its metric centre."""
    out = []
    for b, _, iy, ix in coords.tolist():
        x, y = metric_centre(ix, iy, voxel, pcr)
        az = math.degrees(math.atan2(y, x))
        out.append(int(((az - float(offsets[b])) % 360.0) // width))
    return torch.tensor(out)


def slow_bands(coords, near, far, voxel=VOXEL, pcr=RANGE):
    """Reference: range band (0 near, 1 mid, 2 far) of every voxel from its horizontal metric range."""
    out = []
    for _, _, iy, ix in coords.tolist():
        dist = math.hypot(*metric_centre(ix, iy, voxel, pcr))
        out.append(0 if dist <= near else (1 if dist <= far else 2))
    return torch.tensor(out)


def check_whole_sectors_and_counts(coords, result, ratio, width=10.0, voxel=VOXEL, pcr=RANGE):
    """Per sample: exactly round(ratio x non-empty) sectors selected, all non-empty, and every voxel of an
    unselected sector kept. Returns the slow per-voxel sector index."""
    sectors = slow_sectors(coords, result.sector_offset, width, voxel, pcr)
    for b in range(result.sector_selected.shape[0]):
        rows = coords[:, 0] == b
        nonempty = set(sectors[rows].tolist())
        chosen = set(torch.nonzero(result.sector_selected[b]).flatten().tolist())
        assert len(chosen) == round(ratio * len(nonempty)), (b, len(chosen), len(nonempty))
        assert chosen <= nonempty, "an empty sector was selected"
        unselected = rows & ~result.sector_selected[b][sectors]
        assert result.keep[unselected].all(), "a voxel of an unselected sector was masked"
    return sectors


# ---------------------------------------------------------------------------------- MASKING_TARGET: sectors
@pytest.mark.parametrize("ratio", [0.5, 0.8])
@pytest.mark.parametrize("bernoulli", [True, False])
def test_sectors_mode_selects_round_m_of_the_nonempty_sectors_on_near_scans(ratio, bernoulli, caplog):
    """The issue's case: on mostly-near scans, MASKED_RATIO 0.8 with 0.5/0.75/0.9 selected every sector
    when it meant a voxel fraction. As a sector fraction it selects round(m x non-empty) per sample."""
    gen = torch.Generator().manual_seed(int(ratio * 10) + bernoulli)
    m = masker(masked_ratio=ratio, bernoulli=bernoulli, min_kept_voxels=0)
    with caplog.at_level("WARNING"):
        for _ in range(5):
            # ~36, 10, 21, 14 and 8 non-empty sectors: round() differs from ceil() and floor() somewhere
            coords = near_scene(gen, 5, 3000, [(0, 360), (0, 90), (30, 235), (0, 130), (100, 175)])
            result = m(coords, 5)
            check_whole_sectors_and_counts(coords, result, ratio)
            assert not result.sector_selected.all(1).any(), "some sector must stay visible"
    assert not any("cannot reach" in r.message for r in caplog.records)


@pytest.mark.parametrize("bernoulli", [True, False])
def test_sectors_mode_band_probabilities_inside_selected_sectors(bernoulli):
    gen = torch.Generator().manual_seed(6)
    probs = (0.3, 0.6, 0.9)
    m = masker(masked_ratio=0.5, band_probs=probs, bernoulli=bernoulli, min_kept_voxels=0)
    coords = scene(gen, batch=2, n=20000, r_min=1.0, r_max=60.0)
    result = m(coords, 2)
    sectors = check_whole_sectors_and_counts(coords, result, 0.5)
    band = slow_bands(coords, 10.0, 30.0)
    selected = result.sector_selected[coords[:, 0].long(), sectors]
    for b in range(2):
        for i, p in enumerate(probs):
            rows = selected & (band == i) & (coords[:, 0] == b)
            n, masked = int(rows.sum()), int((~result.keep[rows]).sum())
            assert n > 200
            if bernoulli:  # binomial: masked ~ Bin(n, p)
                assert abs(masked - n * p) <= SIGMAS * math.sqrt(n * p * (1 - p)), (b, i, masked, n * p)
            else:
                assert masked == round(n * p)


def test_sectors_mode_samples_of_a_batch_get_different_sectors():
    gen = torch.Generator().manual_seed(15)
    one = scene(gen, batch=1, n=4000)
    copies = torch.cat([one.clone().index_fill_(1, torch.tensor([0]), b) for b in range(4)])
    result = masker(masked_ratio=0.5)(copies, 4)
    sel = result.sector_selected
    for a in range(4):
        for b in range(a + 1, 4):
            assert not torch.equal(sel[a], sel[b]) or result.sector_offset[a] != result.sector_offset[b]
    assert len({tuple(s.tolist()) for s in sel}) == 4


def test_sector_fraction_statistics_equal_a_slow_count():
    gen = torch.Generator().manual_seed(16)
    coords = near_scene(gen, 3, 2000, [(0, 360), (0, 90), (0, 180)])
    for target in ("sectors", "voxels"):
        result = masker(masked_ratio=0.6, target=target, min_kept_voxels=0)(coords, 4)  # sample 3 is empty
        sectors = slow_sectors(coords, result.sector_offset, 10.0)
        fractions = []
        for b in range(3):
            nonempty = set(sectors[coords[:, 0] == b].tolist())
            chosen = {s for s in nonempty if bool(result.sector_selected[b, s])}
            fractions.append(len(chosen) / len(nonempty))
        assert result.sample_sector_fraction.tolist() == pytest.approx(fractions + [0.0])
        assert float(result.stats["mask_sector_fraction"]) == pytest.approx(sum(fractions) / 3)
        assert float(result.stats["mask_sector_fraction_min"]) == pytest.approx(min(fractions))


# ---------------------------------------------------------------------------------- MASKING_TARGET: voxels
def crossing_sd_bound(coords, result, probs, bernoulli, batch_size):
    """Upper bound of the standard deviation of the total masked count in ``voxels`` mode, and of the
    bias of the exact-count rounding. Given the random sector order the expected masked mass is exactly
    the target; what varies is the crossing sector's Bernoulli draw, Var <= mass^2 / 4 <= (max sector
    mass)^2 / 4 per sample, plus stage 2's Bernoulli draws, Var = sum p (1 - p) <= over all voxels."""
    xy = voxel_centres_xy(coords, VOXEL, RANGE)
    batch = coords[:, 0].long()
    dist = torch.linalg.norm(xy, dim=1)
    p = torch.tensor(probs)[(dist > 10).long() + (dist > 30).long()]
    sector = sector_index(xy, result.sector_offset[batch], 10.0, 36)
    mass = torch.zeros(batch_size * 36).index_add_(0, batch * 36 + sector, p).view(batch_size, 36)
    var = float((mass.max(1).values ** 2 / 4).sum())
    if bernoulli:
        var += float((p * (1 - p)).sum())
    bias = 0.0 if bernoulli else 0.5 * 3 * batch_size  # round() per (sample, band)
    return var, bias


@pytest.mark.parametrize("ratio", [0.3, 0.6, 0.8])
@pytest.mark.parametrize("bernoulli", [True, False])
def test_voxels_mode_achieved_ratio_is_unbiased(ratio, bernoulli):
    """Pooled over 240 samples the masked fraction equals MASKED_RATIO within 5 sigma of its computed
    spread (~0.005): a crossing sector that is always taken (+0.010 to +0.016) fails."""
    gen = torch.Generator().manual_seed(int(ratio * 100) + bernoulli)
    probs = (0.5, 0.75, 0.9)
    masked = total = 0
    var = bias = 0.0
    for seed in range(20):
        m = RadialMasker(MaskingConfig(masked_ratio=ratio, target="voxels", bernoulli=bernoulli, min_kept_voxels=0),
                         VOXEL, RANGE, seed=seed)
        coords = scene(gen, batch=12, n=1500, r_min=12.0)  # mid + far voxels: ratio 0.8 is reachable
        result = m(coords, 12)
        masked += int((~result.keep).sum())
        total += coords.shape[0]
        v, b = crossing_sd_bound(coords, result, probs, bernoulli, 12)
        var, bias = var + v, bias + b
    tolerance = (SIGMAS * math.sqrt(var) + bias) / total
    assert tolerance < 0.0075, tolerance  # the test must be able to see a +0.010 drift
    assert abs(masked / total - ratio) <= tolerance, (masked / total, ratio, tolerance)


def test_voxels_mode_stage1_only_masks_whole_sectors_of_a_one_quadrant_scene():
    """Sectors are judged from metric azimuth around the sensor; a scene in one quadrant has only
    ~9 of 36 sectors non-empty, so an index-based or batch-global implementation fails here."""
    gen = torch.Generator().manual_seed(3)
    m = masker(masked_ratio=0.5, target="voxels", two_stage=False, min_kept_voxels=0)
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


@pytest.mark.parametrize("bernoulli", [True, False])
def test_voxels_mode_band_probabilities_are_honoured_inside_selected_sectors(bernoulli):
    gen = torch.Generator().manual_seed(6)
    probs = (0.3, 0.6, 0.9)
    m = masker(masked_ratio=0.5, target="voxels", band_probs=probs, bernoulli=bernoulli, min_kept_voxels=0)
    coords = scene(gen, batch=2, n=20000, r_min=1.0, r_max=60.0)
    result = m(coords, 2)
    band = slow_bands(coords, 10.0, 30.0)
    sector = slow_sectors(coords, result.sector_offset, 10.0)
    selected = result.sector_selected[coords[:, 0].long(), sector]
    assert result.keep[~selected].all(), "voxels outside selected sectors must be kept"
    for b in range(2):
        for i, p in enumerate(probs):
            rows = selected & (band == i) & (coords[:, 0] == b)
            n, masked = int(rows.sum()), int((~result.keep[rows]).sum())
            if bernoulli:
                assert abs(masked - n * p) <= SIGMAS * math.sqrt(n * p * (1 - p))
            else:
                assert masked == round(n * p)


@pytest.fixture
def fresh_warning_flag(monkeypatch):
    monkeypatch.setattr(masking, "_warned_unreachable", False)


def test_voxels_mode_unreachable_ratio_uses_all_sectors_and_logs_once_per_process(caplog, fresh_warning_flag):
    gen = torch.Generator().manual_seed(11)
    coords = scene(gen, batch=2, n=2000, r_min=1, r_max=9)  # all NEAR (p = 0.5) < 0.8
    with caplog.at_level("WARNING"):
        for _ in range(2):  # two models in one process (e.g. a tool building a model twice)
            m = masker(masked_ratio=0.8, target="voxels", min_kept_voxels=0)
            result = m(coords, 2)
            m(coords, 2)
            assert result.sector_selected.all()
        sectors = masker(masked_ratio=0.8, min_kept_voxels=0)(coords, 2)  # sectors mode never warns
    assert sum("cannot reach MASKED_RATIO" in r.message for r in caplog.records) == 1
    assert not sectors.sector_selected.all(1).any()


# ---------------------------------------------------------------------------------- both modes
@pytest.mark.parametrize("target", ["sectors", "voxels"])
def test_floor_unmasks_exactly_the_missing_voxels(target):
    """Every voxel masked before the floor (probability 1 in every band, ratio 0.99): the floor has to
    unmask many voxels per sample, exactly as many as MIN_KEPT_VOXELS asks for."""
    gen = torch.Generator().manual_seed(9)
    big = scene(gen, batch=2, n=5000)
    small = scene(gen, batch=1, n=40).index_fill_(1, torch.tensor([0]), 3)  # fewer voxels than the floor
    single = torch.tensor([[4, 10, 700, 900]], dtype=torch.int32)
    coords = torch.cat([big, small, single])  # sample 2 is empty
    result = masker(masked_ratio=0.99, target=target, band_probs=(1.0, 1.0, 1.0), min_kept_voxels=200)(coords, 5)
    batch = coords[:, 0].long()
    kept = torch.zeros(5, dtype=torch.long).index_add_(0, batch, result.keep.long())
    assert kept.tolist() == [200, 200, 0, int((batch == 3).sum()), 1]
    sector = slow_sectors(coords, result.sector_offset, 10.0)
    assert result.keep[~result.sector_selected[batch, sector]].all(), "the floor only unmasks"


def test_empty_input_and_zero_ratio():
    assert masker()(torch.zeros(0, 4, dtype=torch.int32), 2).keep.numel() == 0
    gen = torch.Generator().manual_seed(10)
    coords = scene(gen, batch=2, n=1000)
    for target in ("sectors", "voxels"):
        result = masker(masked_ratio=0.0, target=target)(coords, 2)
        assert result.keep.all() and not result.sector_selected.any()


@pytest.mark.parametrize("target", ["sectors", "voxels"])
def test_masker_state_round_trip_resumes_the_same_masks(target):
    """Advance the generator, save, draw, restore (into this masker and into a fresh one) and draw again."""
    gen = torch.Generator().manual_seed(8)
    coords = scene(gen, batch=2, n=2000)
    m = masker(target=target)
    first = m(coords, 2).keep
    state = {k: v.clone() for k, v in m.state_dict().items()}
    second = m(coords, 2).keep
    assert not torch.equal(first, second), "consecutive draws must differ"
    m.load_state_dict(state)
    assert torch.equal(m(coords, 2).keep, second)
    other = RadialMasker(MaskingConfig(target=target), VOXEL, RANGE, seed=123)
    other.load_state_dict(state)
    assert torch.equal(other(coords, 2).keep, second)


def test_deterministic_for_a_fixed_generator():
    gen = torch.Generator().manual_seed(7)
    coords = scene(gen, batch=2, n=3000)
    m = masker()
    a = m(coords, 2, generator=torch.Generator().manual_seed(11))
    b = m(coords, 2, generator=torch.Generator().manual_seed(11))
    c = m(coords, 2, generator=torch.Generator().manual_seed(12))
    assert torch.equal(a.keep, b.keep) and not torch.equal(a.keep, c.keep)


@pytest.mark.parametrize("target", ["sectors", "voxels"])
def test_identical_samples_in_a_batch_get_different_masks(target):
    gen = torch.Generator().manual_seed(5)
    one = scene(gen, batch=1, n=4000)
    two = torch.cat([one, one.clone().index_fill_(1, torch.tensor([0]), 1)])
    result = masker(masked_ratio=0.6, target=target)(two, 2)
    keep0, keep1 = result.keep[: len(one)], result.keep[len(one):]
    assert not torch.equal(keep0, keep1)
    assert not torch.equal(result.sector_selected[0], result.sector_selected[1])


def test_empty_and_single_voxel_samples_and_floor():
    gen = torch.Generator().manual_seed(9)
    big = scene(gen, batch=1, n=5000)
    single = torch.tensor([[2, 10, 700, 900]], dtype=torch.int32)
    coords = torch.cat([big, single])  # sample 1 is empty, sample 2 has one voxel
    result = masker(masked_ratio=0.95, band_probs=(1.0, 1.0, 1.0), min_kept_voxels=32)(coords, 3)
    assert result.keep[-1], "a single-voxel sample keeps its voxel (floor)"
    assert int(result.keep[: len(big)].sum()) >= 32


# ---------------------------------------------------------------------------------- geometry
@pytest.mark.parametrize("voxel,pcr", [(VOXEL, RANGE), (ODD_VOXEL, ODD_RANGE)])
@pytest.mark.parametrize("width", [10.0, 7.5])
def test_sector_index_matches_slow_reference(voxel, pcr, width):
    gen = torch.Generator().manual_seed(4)
    coords = scene(gen, batch=2, n=3000, r_max=45.0, voxel=voxel, pcr=pcr)
    offsets = torch.tensor([3.137, 0.5 * width + 0.271])  # no voxel centre on a sector boundary
    xy = voxel_centres_xy(coords, voxel, pcr)
    fast = sector_index(xy, offsets[coords[:, 0].long()], width, round(360 / width))
    assert torch.equal(fast, slow_sectors(coords, offsets, width, voxel, pcr))


@pytest.mark.parametrize("target", ["sectors", "voxels"])
def test_non_square_grid_and_non_default_thresholds(target):
    """Sectors and bands from metric centres on a non-square, non-divisible grid whose sensor is off the
    grid centre, with DISTANCE_THRESHOLDS [7.5, 18] and exact counts: inside selected sectors NEAR voxels
    (p = 0) are never masked, FAR ones (p = 1) always, MID ones exactly half (rounded)."""
    cfg = masking_config_from_cfg(EasyDict(MASKED_RATIO=0.5, MASKING_TARGET=target, NUM_ANGULAR_GROUPS=48,
                                           DISTANCE_THRESHOLDS=[7.5, 18.0], USE_BERNOULLI_MASKING=False,
                                           RANGE_MASK_PROBS={"NEAR": 0.0, "MID": 0.5, "FAR": 1.0},
                                           MIN_KEPT_VOXELS=0))
    assert (cfg.near, cfg.far, cfg.sector_width, cfg.target) == (7.5, 18.0, 7.5, target)
    m = RadialMasker(cfg, ODD_VOXEL, ODD_RANGE, seed=1)
    gen = torch.Generator().manual_seed(17)
    coords = scene(gen, batch=3, n=6000, r_min=0.5, r_max=40.0, voxel=ODD_VOXEL, pcr=ODD_RANGE)
    result = m(coords, 3)
    sector = slow_sectors(coords, result.sector_offset, 7.5, ODD_VOXEL, ODD_RANGE)
    if target == "sectors":
        check_whole_sectors_and_counts(coords, result, 0.5, 7.5, ODD_VOXEL, ODD_RANGE)
    band = slow_bands(coords, 7.5, 18.0, ODD_VOXEL, ODD_RANGE)
    batch = coords[:, 0].long()
    selected = result.sector_selected[batch, sector]
    assert result.keep[~selected].all()
    assert result.keep[selected & (band == 0)].all()
    assert not result.keep[selected & (band == 2)].any()
    for b in range(3):
        rows = selected & (band == 1) & (batch == b)
        assert int((~result.keep[rows]).sum()) == round(int(rows.sum()) * 0.5)
        for i in range(3):
            in_band = (batch == b) & (band == i)
            want = float((~result.keep[in_band]).float().mean())
            assert float(result.sample_band_ratio[b, i]) == pytest.approx(want)


# ---------------------------------------------------------------------------------- config and helpers
def test_config_keys_and_alias():
    cfg = masking_config_from_cfg(EasyDict(ANGULAR_RANGE=5, MASKED_RATIO=0.7))
    assert cfg.num_sectors == 72 and cfg.sector_width == 5.0
    assert cfg.target == "sectors", "MASKING_TARGET defaults to R-MAE's sector fraction"
    assert masking_config_from_cfg(EasyDict(MASKING_TARGET="Voxels")).target == "voxels"
    with pytest.raises(ValueError, match="MASKING_TARGET must be one of"):
        masking_config_from_cfg(EasyDict(MASKING_TARGET="points"))
    with pytest.raises(ValueError, match="must equal 360"):
        masking_config_from_cfg(EasyDict(NUM_ANGULAR_GROUPS=30, ANGULAR_GROUP_SIZE=10))
    with pytest.raises(ValueError, match=r"RANGE_MASK_PROBS\.FARR.*did you mean 'FAR'"):
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
    band = slow_bands(coords, 10.0, 30.0)
    for b in range(4):
        rows = coords[:, 0] == b
        expected = float((~result.keep[rows]).float().mean()) if bool(rows.any()) else 0.0
        assert float(result.sample_ratio[b]) == pytest.approx(expected)
        for i in range(3):
            in_band = rows & (band == i)
            want = float((~result.keep[in_band]).float().mean()) if bool(in_band.any()) else 0.0
            assert float(result.sample_band_ratio[b, i]) == pytest.approx(want)
    assert float(result.stats["mask_ratio"]) == pytest.approx(float((~result.keep).float().mean()))
    for i, name in enumerate(("near", "mid", "far")):
        want = float((~result.keep[band == i]).float().mean())
        assert float(result.stats[f"mask_ratio_{name}"]) == pytest.approx(want)

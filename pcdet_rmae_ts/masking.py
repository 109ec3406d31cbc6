"""Two-stage radial masking of voxels (R-MAE, Tayebati et al., "Sense Less, Generate More:
Pre-training LiDAR Perception with Masked Autoencoders for Ultra-Efficient 3D Sensing", 2024).

Stage 1 selects angular sectors around the sensor; stage 2 masks the voxels of the selected
sectors with a probability that depends on their range band; unselected sectors stay fully
visible. ``MASKING_TARGET: sectors`` (default, the paper's scheme) selects ``round(MASKED_RATIO x
non-empty sectors)`` per sample; ``voxels`` selects sectors until the *expected* masked-voxel
fraction reaches ``MASKED_RATIO``. All geometry comes from **metric voxel centres relative to the
sensor origin**; every sample of a batch gets its own rotation, sector choice and draws. Fully
vectorised on the input's device; reproducible from a ``torch.Generator``.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Dict, Optional, Sequence, Tuple

import torch

from .backbone_keys import MASKING_KEYS
from .config import check_known_keys, dataclass_from_section
from .scatter import bin_sum, device_constant, rank_within_group

logger = logging.getLogger(__name__)

BANDS = ("NEAR", "MID", "FAR")
MASKING_TARGETS = ("sectors", "voxels")

# "cannot reach MASKED_RATIO" is a property of the config and the data, not of one model: once per
# process (a model is built several times in a run: tools, tests, the teacher's copy).
_warned_unreachable = False


@dataclass(frozen=True)
class MaskingConfig:
    """Validated masking hyper-parameters (angles in degrees, distances in metres)."""

    masked_ratio: float = 0.8
    target: str = field(default="sectors", metadata={"key": "MASKING_TARGET", "convert": lambda v: str(v).lower()})
    # derived from NUM_ANGULAR_GROUPS / ANGULAR_GROUP_SIZE (alias ANGULAR_RANGE), DISTANCE_THRESHOLDS,
    # RANGE_MASK_PROBS by masking_config_from_cfg
    num_sectors: int = field(default=36, metadata={"derived": True})
    sector_width: float = field(default=10.0, metadata={"derived": True})
    near: float = field(default=10.0, metadata={"derived": True})
    far: float = field(default=30.0, metadata={"derived": True})
    band_probs: tuple = field(default=(0.5, 0.75, 0.9), metadata={"derived": True})
    bernoulli: bool = field(default=True, metadata={"key": "USE_BERNOULLI_MASKING"})
    two_stage: bool = field(default=True, metadata={"key": "ENABLE_2STAGE_MASKING"})
    min_kept_voxels: int = 32

    def __post_init__(self):
        if not 0.0 <= self.masked_ratio < 1.0:
            raise ValueError(f"MASKED_RATIO must be in [0, 1), got {self.masked_ratio}")
        if self.target not in MASKING_TARGETS:
            raise ValueError(f"MASKING_TARGET must be one of {list(MASKING_TARGETS)}, got '{self.target}'")
        if abs(self.num_sectors * self.sector_width - 360.0) > 1e-6:
            raise ValueError(
                f"NUM_ANGULAR_GROUPS x ANGULAR_GROUP_SIZE must equal 360 degrees, got "
                f"{self.num_sectors} x {self.sector_width} = {self.num_sectors * self.sector_width}. "
                f"Fix one of them (e.g. 36 groups of 10 degrees).")
        if not 0.0 <= self.near <= self.far:
            raise ValueError(f"DISTANCE_THRESHOLDS must be [near, far] with 0 <= near <= far, "
                             f"got {[self.near, self.far]}")
        if any(not 0.0 <= p <= 1.0 for p in self.band_probs):
            raise ValueError(f"RANGE_MASK_PROBS must lie in [0, 1], got {dict(zip(BANDS, self.band_probs))}")
        if self.min_kept_voxels < 0:
            raise ValueError(f"MIN_KEPT_VOXELS must be >= 0, got {self.min_kept_voxels}")


def masking_config_from_cfg(model_cfg) -> MaskingConfig:
    """Parse the BACKBONE_3D keys of the seed config (``ANGULAR_RANGE`` is the older alias
    of ``ANGULAR_GROUP_SIZE``; when only one of size/count is given the other follows).

    ``MASKING_TARGET`` (default ``sectors``) says what ``MASKED_RATIO`` is a fraction of:
    ``sectors``: the non-empty angular sectors selected in stage 1 (R-MAE); ``voxels``: the
    expected fraction of masked voxels per sample (sectors are added until it is reached)."""
    defaults = MaskingConfig()
    width = model_cfg.get("ANGULAR_GROUP_SIZE", model_cfg.get("ANGULAR_RANGE"))
    count = model_cfg.get("NUM_ANGULAR_GROUPS")
    if width is None and count is None:
        width, count = defaults.sector_width, defaults.num_sectors
    elif width is None:
        width = 360.0 / float(count)
    elif count is None:
        count = int(round(360.0 / float(width)))
    if "ANGULAR_GROUP_SIZE" in model_cfg and "ANGULAR_RANGE" in model_cfg \
            and float(model_cfg["ANGULAR_GROUP_SIZE"]) != float(model_cfg["ANGULAR_RANGE"]):
        raise ValueError("BACKBONE_3D sets both ANGULAR_GROUP_SIZE and its alias ANGULAR_RANGE with "
                         "different values; keep one.")
    near, far = model_cfg.get("DISTANCE_THRESHOLDS", [defaults.near, defaults.far])
    probs = model_cfg.get("RANGE_MASK_PROBS") or {}
    check_known_keys(probs, BANDS, key_path="MODEL.BACKBONE_3D.RANGE_MASK_PROBS")
    default_probs = dict(zip(BANDS, defaults.band_probs))
    # the flat BACKBONE_3D section is shared with other components; the backbone checks its keys
    return dataclass_from_section(
        MaskingConfig, model_cfg, key_path="MODEL.BACKBONE_3D", check_unknown=False,
        num_sectors=int(count), sector_width=float(width), near=float(near), far=float(far),
        band_probs=tuple(float(probs.get(b, default_probs[b])) for b in BANDS))


@dataclass
class MaskResult:
    """Outcome of masking one batch.

    keep: (N,) bool, True for voxels the student sees.
    sector_offset: (B,) float, each sample's sector rotation in degrees.
    sector_selected: (B, G) bool, sectors chosen in stage 1.
    stats: scalar tensors for logging (achieved ratios, overall and per band; fraction of the
        non-empty sectors selected).
    sample_ratio: (B,) achieved masked fraction of each sample (0 for an empty sample).
    sample_band_ratio: (B, 3) the same per range band NEAR, MID, FAR (0 where a band is empty).
    sample_sector_fraction: (B,) selected / non-empty sectors of each sample (0 for an empty sample).
    """

    keep: torch.Tensor
    sector_offset: torch.Tensor
    sector_selected: torch.Tensor
    sector_width: float
    stats: Dict[str, torch.Tensor] = field(default_factory=dict)
    sample_ratio: Optional[torch.Tensor] = None
    sample_band_ratio: Optional[torch.Tensor] = None
    sample_sector_fraction: Optional[torch.Tensor] = None

    def in_masked_sector(self, xy: torch.Tensor, batch_idx: torch.Tensor) -> torch.Tensor:
        """(M,) bool: whether metric points (M, 2) of samples ``batch_idx`` lie in a selected sector."""
        sector = sector_index(xy, self.sector_offset[batch_idx], self.sector_width,
                              self.sector_selected.shape[1])
        return self.sector_selected[batch_idx, sector]


def voxel_centres_xy(coords: torch.Tensor, voxel_size: Sequence[float],
                     point_cloud_range: Sequence[float]) -> torch.Tensor:
    """(N, 2) metric x, y of voxel centres from (N, 4) [b, z, y, x] coords."""
    ixy = torch.stack((coords[:, 3], coords[:, 2]), 1).to(torch.float32)  # a list index would copy to the GPU
    size = device_constant(tuple(float(v) for v in voxel_size[:2]), coords.device)
    origin = device_constant(tuple(float(v) for v in point_cloud_range[:2]), coords.device)
    return (ixy + 0.5) * size + origin


def sector_index(xy: torch.Tensor, offset_deg: torch.Tensor, width: float, count: int) -> torch.Tensor:
    """(N,) long sector of each metric point, sectors starting at ``offset_deg`` (per point)."""
    azimuth = torch.rad2deg(torch.atan2(xy[:, 1], xy[:, 0]))
    rotated = torch.remainder(azimuth - offset_deg, 360.0)
    return torch.clamp((rotated / width).long(), max=count - 1)


class RadialMasker:
    """Per-sample two-stage radial masking; holds its own generator for exact resume."""

    def __init__(self, config: MaskingConfig, voxel_size: Sequence[float],
                 point_cloud_range: Sequence[float], seed: Optional[int] = None):
        self.config = config
        self.voxel_size = [float(v) for v in voxel_size]
        self.point_cloud_range = [float(v) for v in point_cloud_range]
        self.seed = seed
        self._generators: Dict[str, torch.Generator] = {}
        self._calls = 0

    def generator(self, device: torch.device) -> torch.Generator:
        key = str(device)
        if key not in self._generators:
            gen = torch.Generator(device=device)
            gen.manual_seed(self.seed if self.seed is not None else int(torch.randint(0, 2**62, (1,))))
            self._generators[key] = gen
        return self._generators[key]

    def state_dict(self) -> Dict[str, torch.Tensor]:
        return {key: gen.get_state() for key, gen in self._generators.items()}

    def load_state_dict(self, state: Dict[str, torch.Tensor]) -> None:
        for key, gen_state in state.items():
            self.generator(torch.device(key)).set_state(gen_state)

    def __call__(self, coords: torch.Tensor, batch_size: int,
                 generator: Optional[torch.Generator] = None) -> MaskResult:
        """Mask (N, 4) [b, z, y, x] voxel coords of ``batch_size`` samples."""
        cfg = self.config
        device = coords.device
        gen = generator if generator is not None else self.generator(device)
        self._calls += 1
        batch = coords[:, 0].long()
        xy = voxel_centres_xy(coords, self.voxel_size, self.point_cloud_range)
        offset = torch.rand(batch_size, device=device, generator=gen) * cfg.sector_width
        sector = sector_index(xy, offset[batch], cfg.sector_width, cfg.num_sectors)
        band = self._band(xy)
        cell = batch * cfg.num_sectors + sector
        occupied = torch.zeros(batch_size * cfg.num_sectors, dtype=torch.bool, device=device)
        occupied = occupied.index_fill_(0, cell, True).view(batch_size, cfg.num_sectors)
        if cfg.masked_ratio == 0.0 or coords.shape[0] == 0:
            keep = torch.ones(coords.shape[0], dtype=torch.bool, device=device)
            selected = torch.zeros(batch_size, cfg.num_sectors, dtype=torch.bool, device=device)
        else:
            if cfg.target == "sectors":
                selected = self._select_by_count(occupied, gen)
            else:
                selected = self._select_by_mass(batch, cell, band, occupied, gen)
            in_selected = selected[batch, sector]
            keep = ~(in_selected & self._stage2(batch, band, in_selected, batch_size, gen))
            keep = self._apply_floor(keep, batch, batch_size, gen)
        result = MaskResult(keep, offset, selected, cfg.sector_width)
        result.stats, result.sample_ratio, result.sample_band_ratio = self._stats(keep, batch, band, batch_size)
        result.sample_sector_fraction = self._sector_stats(result.stats, selected, occupied)
        if self._calls == 1:
            self._log_first(result)
        return result

    def _band(self, xy: torch.Tensor) -> torch.Tensor:
        dist = torch.linalg.norm(xy, dim=1)
        return (dist > self.config.near).long() + (dist > self.config.far).long()

    def _select_by_count(self, occupied: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """(B, G) bool, ``MASKING_TARGET: sectors``: ``round(masked_ratio x non-empty sectors)`` of
        each sample's non-empty sectors, chosen uniformly at random (Python's ``round``: half to even)."""
        batch_size, num = occupied.shape
        count = torch.round(self.config.masked_ratio * occupied.sum(1).float())
        # empty sectors get a score above every random one, so they sort last and are never taken
        score = torch.rand(batch_size, num, device=occupied.device, generator=gen).masked_fill(~occupied, 2.0)
        order = torch.argsort(score, dim=1)
        take_sorted = torch.arange(num, device=occupied.device)[None, :] < count[:, None]
        return torch.zeros_like(occupied).scatter_(1, order, take_sorted)

    def _select_by_mass(self, batch, cell, band, occupied, gen) -> torch.Tensor:
        """(B, G) bool, ``MASKING_TARGET: voxels``. Sectors are taken in a random order per sample until
        their expected masked mass reaches ``masked_ratio`` x the sample's voxels; the sector that crosses
        the target is taken with the probability that makes the expectation exact."""
        cfg = self.config
        batch_size, num = occupied.shape
        device = batch.device
        if cfg.two_stage:
            probs = device_constant(tuple(cfg.band_probs), device)
            mass = bin_sum(cell, batch_size * num, probs[band]).view(batch_size, num)
            target = cfg.masked_ratio * bin_sum(batch, batch_size)
        else:  # stage 1 only: a fraction masked_ratio of the non-empty sectors (in expectation)
            mass = occupied.float()
            target = cfg.masked_ratio * mass.sum(1)
        reachable = mass.sum(1) + 1e-6 >= target
        self._warn_unreachable(reachable)
        order = torch.argsort(torch.rand(batch_size, num, device=device, generator=gen), dim=1)
        mass_sorted = torch.gather(mass, 1, order)
        before = torch.cumsum(mass_sorted, 1) - mass_sorted
        need = (target[:, None] - before).clamp(min=0.0)
        take_prob = torch.where(mass_sorted > 0, need / mass_sorted.clamp(min=1e-12),
                                torch.zeros_like(need)).clamp(max=1.0)
        take_sorted = torch.rand(batch_size, num, device=device, generator=gen) < take_prob
        take_sorted |= ~reachable[:, None]
        return torch.zeros_like(take_sorted).scatter_(1, order, take_sorted)

    def _warn_unreachable(self, reachable: torch.Tensor) -> None:
        """``voxels`` mode: log once per process when a sample cannot reach the ratio. Reading the flag
        syncs with the device, so it is read on the first calls and then every 50th, not every step."""
        global _warned_unreachable
        if _warned_unreachable or (self._calls > 5 and self._calls % 50):
            return
        if not bool(reachable.all()):
            logger.warning(
                "Masking (MASKING_TARGET: voxels): RANGE_MASK_PROBS %s cannot reach MASKED_RATIO %.2f for some "
                "samples even with every sector selected; all sectors are used for those samples (their "
                "achieved ratio is lower, and no sector stays visible). Use MASKING_TARGET: sectors (R-MAE's "
                "scheme), raise the band probabilities or lower MASKED_RATIO. (Logged once.)",
                dict(zip(BANDS, self.config.band_probs)), self.config.masked_ratio)
            _warned_unreachable = True

    def _log_first(self, result: MaskResult) -> None:
        """One INFO line on the first call (one host sync): what this config does to real data."""
        stats = {k: float(v) for k, v in result.stats.items()}
        logger.info(
            "Masking (MASKING_TARGET: %s, MASKED_RATIO %.2f), first batch: %.1f%% of the non-empty sectors "
            "selected per sample (min %.1f%%), %.1f%% of the voxels masked (near %.1f%%, mid %.1f%%, far %.1f%%)",
            self.config.target, self.config.masked_ratio, 100 * stats["mask_sector_fraction"],
            100 * stats["mask_sector_fraction_min"], 100 * stats["mask_ratio"], 100 * stats["mask_ratio_near"],
            100 * stats["mask_ratio_mid"], 100 * stats["mask_ratio_far"])

    def _stage2(self, batch, band, in_selected, batch_size, gen) -> torch.Tensor:
        """(N,) bool: masked by the range-aware stage (True everywhere when stage 2 is off)."""
        cfg = self.config
        if not cfg.two_stage:
            return torch.ones_like(in_selected)
        probs = device_constant(tuple(cfg.band_probs), batch.device)[band]
        if cfg.bernoulli:
            return torch.rand(batch.shape[0], device=batch.device, generator=gen) < probs
        # exact count per (sample, band) among the voxels of selected sectors
        group = (batch * 3 + band) * 2 + in_selected.long()
        num_groups = batch_size * 6
        ranks = rank_within_group(group, num_groups, gen)
        counts = bin_sum(group, num_groups)
        quota = torch.round(counts[group] * probs)
        return ranks.to(quota.dtype) < quota

    def _apply_floor(self, keep, batch, batch_size, gen) -> torch.Tensor:
        """Unmask random voxels so every non-empty sample keeps ``min_kept_voxels`` (or all)."""
        floor = self.config.min_kept_voxels
        if floor == 0:
            return keep
        total, kept = bin_sum(batch, batch_size, torch.stack([torch.ones_like(keep), keep], 1)).long().unbind(1)
        deficit = (torch.clamp(total, max=floor) - kept).clamp(min=0)
        # One host sync to skip the ranking (a randperm and a sort of every voxel, ~15 kernels) in the
        # usual case where every sample keeps enough: cheaper than the work it saves on a training step.
        if not bool(deficit.any()):
            return keep
        group = batch * 2 + keep.long()  # rank the masked voxels of each sample
        ranks = rank_within_group(group, batch_size * 2, gen)
        return keep | (ranks < deficit[batch])

    def _stats(self, keep, batch, band, batch_size):
        """(scalar stats for logging, (B,) per-sample ratio, (B, 3) per-sample-and-band ratio), from
        one pair of per-(sample, band) sums; masked reductions, so no host sync on the training step."""
        masked = (~keep).float()
        sums = bin_sum(batch * 3 + band, batch_size * 3, torch.stack([masked, torch.ones_like(masked)], 1))
        masked_sb, total_sb = sums[:, 0].view(batch_size, 3), sums[:, 1].view(batch_size, 3)
        sample_band_ratio = masked_sb / total_sb.clamp(min=1.0)
        counts = total_sb.sum(1)
        sample_ratio = masked_sb.sum(1) / counts.clamp(min=1.0)
        stats = {"mask_ratio": masked_sb.sum() / counts.sum().clamp(min=1.0)}
        stats["mask_ratio_sample_mean"], stats["mask_ratio_sample_min"] = _mean_and_min(sample_ratio, counts > 0)
        band_masked, band_total = masked_sb.sum(0), total_sb.sum(0)
        for i, name in enumerate(BANDS):
            stats[f"mask_ratio_{name.lower()}"] = band_masked[i] / band_total[i].clamp(min=1.0)
        return stats, sample_ratio, sample_band_ratio

    @staticmethod
    def _sector_stats(stats: Dict[str, torch.Tensor], selected: torch.Tensor, occupied: torch.Tensor) -> torch.Tensor:
        """Adds ``mask_sector_fraction`` (mean over non-empty samples) and ``..._min`` to ``stats``;
        returns the (B,) fraction of each sample's non-empty sectors that were selected."""
        nonempty = occupied.sum(1).float()
        fraction = (selected & occupied).sum(1).float() / nonempty.clamp(min=1.0)
        stats["mask_sector_fraction"], stats["mask_sector_fraction_min"] = _mean_and_min(fraction, nonempty > 0)
        return fraction


def _mean_and_min(values: torch.Tensor, has: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Mean and min of (B,) float ``values`` over the samples where (B,) bool ``has``: 0 and 1 when no
    sample has, 0 and 0 for B = 0. Masked reductions, so no host sync on the training step."""
    mean = (values * has).sum() / has.sum().clamp(min=1)
    low = torch.where(has, values, torch.ones_like(values)).min() if values.numel() else values.new_zeros(())
    return mean, low


__all__ = ["MASKING_TARGETS", "MaskingConfig", "MaskResult", "RadialMasker", "masking_config_from_cfg",
           "voxel_centres_xy", "sector_index", "rank_within_group", "bin_sum", "MASKING_KEYS", "BANDS"]

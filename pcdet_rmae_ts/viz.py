"""Pictures of pretraining: bird's-eye views of the radial mask and of the occupancy
reconstruction, and training curves read from tensorboard event files.

Pure functions over arrays/tensors that return matplotlib ``Figure`` objects (Agg canvas,
no pyplot state, so they run headless and inside the training loop) or write PNG files.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Circle, Patch, Wedge

from .masking import sector_index, voxel_centres_xy
from .occupancy import masked_sector_cells, occupancy_metrics

logger = logging.getLogger(__name__)

KEPT_COLOR = "#1f77b4"      # voxels the student sees
MASKED_COLOR = "#ff7f0e"    # voxels hidden from the student
SECTOR_FILL = "#ff7f0e"     # selected (stage-1) sectors
TP_COLOR, FP_COLOR, FN_COLOR = "#2ca02c", "#d62728", "#9467bd"
MASKED_REGION_COLOR = "#d9d9d9"
OUT_OF_RANGE_COLOR = "#8c8c8c"
EVENT_GLOB = "events.out.tfevents.*"


def _rgb(color: str) -> np.ndarray:
    return np.array([int(color[i:i + 2], 16) for i in (1, 3, 5)], dtype=np.uint8)


def new_figure(width: float, height: float, dpi: int = 100) -> Figure:
    """A Figure on its own Agg canvas (never registered with pyplot)."""
    fig = Figure(figsize=(width, height), dpi=dpi)
    FigureCanvasAgg(fig)
    return fig


def figure_to_array(fig: Figure) -> np.ndarray:
    """(H, W, 3) uint8 RGB rendering of ``fig`` (for tensorboard's ``add_image``)."""
    canvas = fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def save_figure(fig: Figure, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def _numpy(value) -> np.ndarray:
    return value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)


# ---------------------------------------------------------------------- masking BEV
@dataclass
class SampleMask:
    """The mask of one sample in numpy: voxel coords (N, 3) [z, y, x], keep (N,) bool,
    sector rotation (degrees), selected sectors (G,) bool and sector width (degrees)."""

    coords: np.ndarray
    keep: np.ndarray
    sector_offset: float
    sector_selected: np.ndarray
    sector_width: float


def sample_mask(coords, mask, sample: int = 0) -> SampleMask:
    """Extract sample ``sample`` from batch coords (N, 4) [b, z, y, x] and a ``MaskResult``."""
    coords, keep = _numpy(coords), _numpy(mask.keep).astype(bool)
    rows = coords[:, 0] == sample
    if not rows.any():
        raise ValueError(f"Sample {sample} has no voxels in this batch (samples: {np.unique(coords[:, 0])}).")
    return SampleMask(coords[rows, 1:].astype(np.int64), keep[rows], float(_numpy(mask.sector_offset)[sample]),
                      _numpy(mask.sector_selected)[sample].astype(bool), float(mask.sector_width))


def _centres_xy(coords_zyx: np.ndarray, voxel_size: Sequence[float],
                point_cloud_range: Sequence[float]) -> torch.Tensor:
    """(N, 2) metric x, y of the centres of (N, 3) [z, y, x] voxel coords (masking's own geometry)."""
    coords = torch.from_numpy(np.pad(np.asarray(coords_zyx, dtype=np.int64), ((0, 0), (1, 0))))
    return voxel_centres_xy(coords, voxel_size, point_cloud_range)


def voxel_ranges(coords_zyx: np.ndarray, voxel_size: Sequence[float],
                 point_cloud_range: Sequence[float]) -> np.ndarray:
    """(N,) horizontal range in metres of voxel centres (masking's own geometry)."""
    return torch.linalg.norm(_centres_xy(coords_zyx, voxel_size, point_cloud_range), dim=1).numpy()


def occupied_sectors(sm: SampleMask, voxel_size: Sequence[float], point_cloud_range: Sequence[float]) -> np.ndarray:
    """(G,) bool: the sample's non-empty sectors (masking's own sector geometry)."""
    xy = _centres_xy(sm.coords, voxel_size, point_cloud_range)
    count = int(sm.sector_selected.shape[0])
    sector = sector_index(xy, torch.full((xy.shape[0],), sm.sector_offset), sm.sector_width, count)
    out = np.zeros(count, dtype=bool)
    out[sector.numpy()] = True
    return out


def achieved_ratios(sm: SampleMask, voxel_size: Sequence[float], point_cloud_range: Sequence[float],
                    near: float, far: float) -> Dict[str, float]:
    """Masked fraction overall and per range band (NaN for an empty band)."""
    dist = voxel_ranges(sm.coords, voxel_size, point_cloud_range)
    band = (dist > near).astype(int) + (dist > far).astype(int)
    masked = ~sm.keep
    out = {"all": float(masked.mean())}
    for i, name in enumerate(("near", "mid", "far")):
        sel = band == i
        out[name] = float(masked[sel].mean()) if sel.any() else float("nan")
    return out


def bev_labels(coords_zyx: np.ndarray, keep: np.ndarray, grid_xy: Tuple[int, int],
               max_pixels: int = 800) -> np.ndarray:
    """(H, W) int8 BEV raster, 0 empty / 1 masked / 2 kept (a column with any kept voxel is kept),
    block-max pooled so that no side exceeds ``max_pixels``."""
    nx, ny = int(grid_xy[0]), int(grid_xy[1])
    factor = max(1, -(-max(nx, ny) // max_pixels))
    h, w = -(-ny // factor), -(-nx // factor)
    raster = np.zeros((h, w), dtype=np.int8)
    codes = np.where(keep, 2, 1).astype(np.int8)
    np.maximum.at(raster, (coords_zyx[:, 1] // factor, coords_zyx[:, 2] // factor), codes)
    return raster


def _draw_sectors(ax, sm: SampleMask, radius: float) -> None:
    count = sm.sector_selected.shape[0]
    for k in range(count):
        start = sm.sector_offset + k * sm.sector_width
        if sm.sector_selected[k]:
            ax.add_patch(Wedge((0.0, 0.0), radius, start, start + sm.sector_width, facecolor=SECTOR_FILL,
                               alpha=0.12, edgecolor="none", zorder=0))
        rad = np.deg2rad(start)
        ax.plot([0.0, radius * np.cos(rad)], [0.0, radius * np.sin(rad)], color="0.55", lw=0.4, zorder=1)


def _draw_bands(ax, near: float, far: float) -> None:
    for r in (near, far):
        ax.add_patch(Circle((0.0, 0.0), r, fill=False, ls="--", lw=1.0, edgecolor="k", zorder=3))
        ax.annotate(f"{r:g} m", (r * np.cos(np.pi / 4), r * np.sin(np.pi / 4)), fontsize=8, zorder=4)


def masking_bev_figure(sm: SampleMask, voxel_size: Sequence[float], point_cloud_range: Sequence[float],
                       near: float, far: float, title: str = "", max_pixels: int = 800) -> Figure:
    """BEV of one sample: kept vs masked voxels, sector boundaries (selected sectors shaded)
    and the near/far range circles; the achieved masked ratios are in the title."""
    pcr = [float(v) for v in point_cloud_range]
    grid = (round((pcr[3] - pcr[0]) / voxel_size[0]), round((pcr[4] - pcr[1]) / voxel_size[1]))
    labels = bev_labels(sm.coords, sm.keep, grid, max_pixels)
    image = np.zeros(labels.shape + (4,), dtype=np.uint8)  # empty cells transparent: sectors show through
    image[labels == 1] = np.append(_rgb(MASKED_COLOR), 255)
    image[labels == 2] = np.append(_rgb(KEPT_COLOR), 255)
    fig = new_figure(8, 8.4)
    ax = fig.add_subplot(1, 1, 1)
    ax.imshow(image, origin="lower", extent=(pcr[0], pcr[3], pcr[1], pcr[4]), interpolation="nearest", zorder=2)
    radius = float(np.hypot(max(abs(pcr[0]), abs(pcr[3])), max(abs(pcr[1]), abs(pcr[4]))))
    _draw_sectors(ax, sm, radius)
    _draw_bands(ax, near, far)
    ax.set_xlim(pcr[0], pcr[3])
    ax.set_ylim(pcr[1], pcr[4])
    ax.set_aspect("equal")
    ax.set_xlabel("x [m]")
    ax.set_ylabel("y [m]")
    ratios = achieved_ratios(sm, voxel_size, pcr, near, far)
    kept, total = int(sm.keep.sum()), int(sm.keep.size)
    handles = [Patch(color=KEPT_COLOR, label=f"kept ({kept})"),
               Patch(color=MASKED_COLOR, label=f"masked ({total - kept})"),
               Patch(facecolor=SECTOR_FILL, alpha=0.25, label="selected sector"),
               Line2D([], [], color="k", ls="--", label="range bands")]
    ax.legend(handles=handles, loc="upper right", fontsize=8, framealpha=0.9)
    head = f"{title} · " if title else ""
    occupied = occupied_sectors(sm, voxel_size, pcr)
    ax.set_title(f"{head}masked {ratios['all']:.1%} of {total} voxels · "
                 f"{int((sm.sector_selected & occupied).sum())}/{int(occupied.sum())} non-empty sectors selected\n"
                 f"near {ratios['near']:.1%} · mid {ratios['mid']:.1%} · far {ratios['far']:.1%}", fontsize=10)
    fig.tight_layout()
    return fig


def snapshot_mask_figure(snapshot: Optional[dict], sample: int = 0, title: str = "") -> Optional[Figure]:
    """The BEV masking figure of a masking snapshot (``PretrainModel.masking_snapshot()``: coords,
    mask, voxel_size, point_cloud_range, near, far); None without one or when ``sample`` had no voxels."""
    if not snapshot or not bool((snapshot["coords"][:, 0] == sample).any()):
        return None
    sm = sample_mask(snapshot["coords"], snapshot["mask"], sample)
    return masking_bev_figure(sm, snapshot["voxel_size"], snapshot["point_cloud_range"], snapshot["near"],
                              snapshot["far"], title)


# ---------------------------------------------------------------------- occupancy
def masked_cells(mask, sample: int, shape_yx: Tuple[int, int], stride: int, voxel_size: Sequence[float],
                 point_cloud_range: Sequence[float]) -> np.ndarray:
    """(Y', X') bool: coarse cells whose centre lies in one of the sample's selected sectors."""
    batch_size = int(mask.sector_offset.shape[0])
    return _numpy(masked_sector_cells(mask, batch_size, shape_yx, stride, voxel_size, point_cloud_range)[sample])


def _cells(valid, shape: Tuple[int, ...]) -> np.ndarray:
    """(Z', Y', X') bool: ``valid`` ((Z', Y', X') or (Y', X') bool; None: every cell) broadcast to ``shape``."""
    if valid is None:
        return np.ones(shape, dtype=bool)
    return np.broadcast_to(np.asarray(valid, dtype=bool), shape)


def confusion_columns(logits, target, valid=None) -> Dict[str, np.ndarray]:
    """Per-voxel confusion of (Z', Y', X') logits vs {0, 1} target, counted per BEV column.

    valid: (Z', Y', X') or (Y', X') bool cells that count (default: all). Returns (Y', X') int64
    counts of true-positive, false-positive and false-negative voxels ``tp`` / ``fp`` / ``fn`` over z,
    ``prob`` (Y', X') the highest predicted probability over z and ``truth`` (Y', X') any target voxel.
    """
    logits, target = _numpy(logits), _numpy(target)
    pred, truth = logits > 0, target > 0.5
    region = _cells(valid, pred.shape)
    return {"tp": (pred & truth & region).sum(0), "fp": (pred & ~truth & region).sum(0),
            "fn": (~pred & truth & region).sum(0), "prob": 1.0 / (1.0 + np.exp(-logits.max(0))),
            "truth": truth.any(0)}


def voxel_precision_recall(logits, target, region) -> Tuple[float, float]:
    """Precision and recall over the (Z', Y', X') cells of ``region`` ((Z', Y', X') or (Y', X') bool):
    ``occupancy.occupancy_metrics``, the numbers training logs as ``occ_*`` / ``occ_masked_*``."""
    logits = torch.as_tensor(_numpy(logits), dtype=torch.float32)
    region = torch.as_tensor(_cells(region, tuple(logits.shape)).copy())
    metrics = occupancy_metrics(logits, torch.as_tensor(_numpy(target), dtype=torch.float32), region)
    return float(metrics["occ_precision"]), float(metrics["occ_recall"])


def column_confusion_image(conf: Dict[str, np.ndarray], num_z: int, min_shade: float = 0.2) -> np.ndarray:
    """(Y', X', 3) uint8: each column's colour is the mix of TP / FP / FN colours weighted by its voxel
    counts, and its shade (from white) the share of its ``num_z`` levels involved, at least ``min_shade``.
    A column with one false z-level is a faint pink, not red; white where a column has no such voxel."""
    counts = np.stack([conf["tp"], conf["fp"], conf["fn"]], -1).astype(np.float64)
    total = counts.sum(-1, keepdims=True)
    colours = np.stack([_rgb(TP_COLOR), _rgb(FP_COLOR), _rgb(FN_COLOR)]).astype(np.float64)
    mix = counts @ colours / np.maximum(total, 1.0)
    shade = np.where(total > 0, min_shade + (1.0 - min_shade) * np.minimum(total / max(num_z, 1), 1.0), 0.0)
    return np.round(255.0 + shade * (mix - 255.0)).astype(np.uint8)


def occupancy_figure(logits, target, masked: np.ndarray, extent: Sequence[float],
                     valid: Optional[np.ndarray] = None, title: str = "") -> Figure:
    """Occupancy prediction vs target of one sample at the decoder stride.

    logits, target: (Z', Y', X'); masked: (Y', X') bool cells in masked sectors (outlined);
    valid: (Z', Y', X') or (Y', X') bool cells that count (inside the point-cloud range; training's
    region when ``RESTRICT_TO_RANGE``), default all; extent: (x0, x1, y0, y1) metres.
    Left: per-voxel TP / FP / FN counted per column (colour: their mix, shade: how many levels),
    with training's per-voxel precision and recall; right: predicted probability (max over z).
    """
    logits = _numpy(logits)
    num_z = int(logits.shape[0])
    valid3 = _cells(valid, logits.shape)
    conf = confusion_columns(logits, target, valid3)
    image = column_confusion_image(conf, num_z)
    untouched = (conf["tp"] + conf["fp"] + conf["fn"]) == 0
    image[untouched & masked] = _rgb(MASKED_REGION_COLOR)
    image[~valid3.any(0)] = _rgb(OUT_OF_RANGE_COLOR)
    fig = new_figure(14, 7.4)
    left, right = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    left.imshow(image, origin="lower", extent=tuple(extent), interpolation="nearest")
    counts = {k: int(conf[k].sum()) for k in ("tp", "fp", "fn")}
    left.legend(handles=[Patch(color=TP_COLOR, label=f"true positive voxels ({counts['tp']})"),
                         Patch(color=FP_COLOR, label=f"false positive voxels ({counts['fp']})"),
                         Patch(color=FN_COLOR, label=f"false negative voxels ({counts['fn']})"),
                         Patch(facecolor=MASKED_REGION_COLOR, edgecolor="k", label="masked sectors")],
                loc="upper right", fontsize=8, framealpha=0.9)
    for ax in (left, right):  # masked sectors outlined on top
        if masked.any() and not masked.all():
            ax.contour(masked.astype(float), levels=[0.5], colors="k", linewidths=0.9, extent=tuple(extent),
                       origin="lower")
    p_all, r_all = voxel_precision_recall(logits, target, valid3)
    p_m, r_m = voxel_precision_recall(logits, target, valid3 & masked[None])
    left.set_title(f"per-voxel prediction vs target (as training's occ_*): all P {p_all:.2f} R {r_all:.2f} · "
                   f"masked sectors P {p_m:.2f} R {r_m:.2f}\ncolumn colour: mix of its TP / FP / FN voxels; "
                   f"shade: how many of its {num_z} levels", fontsize=10)
    shown = right.imshow(conf["prob"], origin="lower", extent=tuple(extent), interpolation="nearest",
                         cmap="viridis", vmin=0.0, vmax=1.0)
    right.contour(conf["truth"].astype(float), levels=[0.5], colors="w", linewidths=0.5,
                  extent=tuple(extent), origin="lower")
    right.set_title("predicted occupancy probability, max over z (white: target, black: masked sectors)",
                    fontsize=10)
    fig.colorbar(shown, ax=right, fraction=0.046, pad=0.04)
    for ax in (left, right):
        ax.set_xlabel("x [m]")
        ax.set_ylabel("y [m]")
        ax.set_aspect("equal")
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------- tensorboard scalars
@dataclass
class Series:
    """One scalar tag: steps (S,) int64 and values (S,) float64, sorted by step."""

    steps: np.ndarray
    values: np.ndarray


def event_files(logdir: Path) -> List[Path]:
    """Event files under ``logdir`` (recursively), oldest first (their names start with a timestamp)."""
    logdir = Path(logdir)
    if logdir.is_file():
        return [logdir]
    if not logdir.is_dir():
        raise FileNotFoundError(f"--logdir {logdir} does not exist; pass the run's tensorboard folder "
                                f"(output/<cfg group>/<cfg name>/<extra_tag>/tensorboard).")
    def stamp(path: Path) -> Tuple[int, str]:
        parts = path.name.split(".")
        return (int(parts[3]) if len(parts) > 3 and parts[3].isdigit() else 0, str(path))

    return sorted(logdir.rglob(EVENT_GLOB), key=stamp)


def _to_series(points: Dict[str, Dict[int, float]]) -> Dict[str, Series]:
    out = {}
    for tag, by_step in points.items():
        steps = np.array(sorted(by_step), dtype=np.int64)
        out[tag] = Series(steps, np.array([by_step[s] for s in steps], dtype=np.float64))
    return out


def _event_accumulator():
    try:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    except ImportError as err:
        raise ImportError("Reading training curves needs tensorboard's event reader, which is not installed: "
                          "pip install 'pcdet_rmae_ts[viz]' (or pip install tensorboard).") from err
    return EventAccumulator


def read_scalars(logdir: Path) -> Dict[str, Series]:
    """Every scalar tag of the event files under ``logdir``, read with tensorboard's EventAccumulator
    (a truncated tail of a run still writing is skipped). A step logged twice (resumed run) keeps the
    value written last; earlier steps are kept too (no tensorboard-style purge of "orphaned" steps)."""
    files = event_files(logdir)
    if not files:
        raise FileNotFoundError(f"No {EVENT_GLOB} files under {logdir}.")
    accumulator = _event_accumulator()
    points: Dict[str, Dict[int, float]] = {}
    for path in files:
        acc = accumulator(str(path), size_guidance={"scalars": 0}, purge_orphaned_data=False)
        acc.Reload()
        for tag in acc.Tags().get("scalars", []):
            points.setdefault(tag, {}).update({int(e.step): float(e.value) for e in acc.Scalars(tag)})
    return _to_series(points)


def smooth(values: np.ndarray, weight: float = 0.6) -> np.ndarray:
    """Tensorboard-style debiased exponential moving average."""
    out, acc = np.empty_like(values, dtype=np.float64), 0.0
    for i, v in enumerate(values):
        acc = weight * acc + (1 - weight) * v
        out[i] = acc / (1 - weight ** (i + 1))
    return out


LOSS_TAG = re.compile(r"^train/loss($|_)")
LR_PREFIX = "meta_data/learning_rate/"
SIMILARITY_TAG = "train/ts_cosine_similarity"
# After the loss and learning-rate panels, one panel per group, so that no line hides another
# (the batch ratio and the per-sample mean nearly coincide; occ_masked_* is drawn over by occ_*).
METRIC_PANELS = (
    ("masked voxel ratio (batch)", re.compile(r"^train/mask_ratio$")),
    ("masked voxel ratio per sample (mean, min)", re.compile(r"^train/mask_ratio_sample_(mean|min)$")),
    ("masked voxel ratio per range band", re.compile(r"^train/mask_ratio_(near|mid|far)$")),
    ("selected sectors / non-empty sectors", re.compile(r"^train/mask_sector_fraction(_min)?$")),
    ("occupancy precision / recall, all cells", re.compile(r"^train/occ_(precision|recall)$")),
    ("occupancy precision / recall, masked sectors", re.compile(r"^train/occ_masked_(precision|recall)$")),
)


def curve_panels(scalars: Dict[str, Series]) -> List[Tuple[str, List[str]]]:
    """(panel title, tags) in display order: one panel per loss term, then learning rate per
    group (the single base LR if no groups), then the groups of ``METRIC_PANELS`` that were logged."""
    tags = sorted(scalars)
    panels = [(tag[len("train/"):], [tag]) for tag in tags if LOSS_TAG.match(tag)]
    lr = [t for t in tags if t.startswith(LR_PREFIX)] or [t for t in tags if t == "meta_data/learning_rate"]
    if lr:
        panels.append(("learning rate", lr))
    for title, pattern in METRIC_PANELS:
        group = [t for t in tags if pattern.match(t)]
        if group:
            panels.append((title, group))
    return panels


def _plot_series(ax, scalars: Dict[str, Series], tags: Sequence[str], strip: str = "") -> None:
    for tag in tags:
        s = scalars[tag]
        label = tag[len(strip):] if strip and tag.startswith(strip) else tag.split("/")[-1]
        line, = ax.plot(s.steps, smooth(s.values) if s.values.size > 2 else s.values, lw=1.4, label=label)
        if s.values.size > 2:
            ax.plot(s.steps, s.values, color=line.get_color(), alpha=0.25, lw=0.8)
    ax.set_xlabel("iteration")
    ax.grid(alpha=0.3)


def training_curves_figure(scalars: Dict[str, Series], title: str = "") -> Figure:
    """Grid of panels from :func:`curve_panels` (raw values faded, smoothed on top)."""
    panels = curve_panels(scalars)
    if not panels:
        raise ValueError(f"No loss, learning-rate or mask-ratio tags among {sorted(scalars)[:20]}; is this a "
                         f"pretraining run's tensorboard folder?")
    cols = min(3, len(panels))
    rows = -(-len(panels) // cols)
    fig = new_figure(5.0 * cols, 3.4 * rows + 0.4)
    for i, (name, tags) in enumerate(panels):
        ax = fig.add_subplot(rows, cols, i + 1)
        _plot_series(ax, scalars, tags, strip=LR_PREFIX if name == "learning rate" else "train/")
        ax.set_title(name, fontsize=10)
        if len(tags) > 1 or name == "learning rate":
            ax.legend(fontsize=7)
        if name == "learning rate":
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return fig


def similarity_figure(scalars: Dict[str, Series], title: str = "") -> Optional[Figure]:
    """Student-vs-teacher cosine similarity over training (with the EMA momentum if logged);
    None when the run logged no similarity (no teacher)."""
    if SIMILARITY_TAG not in scalars:
        return None
    fig = new_figure(7, 4)
    ax = fig.add_subplot(1, 1, 1)
    s = scalars[SIMILARITY_TAG]
    ax.plot(s.steps, s.values, "o-", ms=3, lw=1.2, color="#1f77b4", label="cosine similarity")
    ax.set_ylabel("student vs teacher cosine similarity")
    ax.set_xlabel("iteration")
    ax.grid(alpha=0.3)
    if "train/teacher_momentum" in scalars:
        m = scalars["train/teacher_momentum"]
        twin = ax.twinx()
        twin.plot(m.steps, m.values, color="0.5", lw=1.0, ls="--", label="EMA momentum")
        twin.set_ylabel("teacher EMA momentum", color="0.4")
    ax.set_title(title or "student vs teacher feature similarity (BEV features, shared sites)", fontsize=10)
    fig.tight_layout()
    return fig


__all__ = ["SampleMask", "Series", "sample_mask", "occupied_sectors", "achieved_ratios", "bev_labels",
           "masking_bev_figure", "snapshot_mask_figure", "masked_cells", "confusion_columns",
           "voxel_precision_recall", "column_confusion_image", "occupancy_figure", "read_scalars",
           "event_files", "curve_panels", "training_curves_figure", "similarity_figure",
           "figure_to_array", "save_figure", "new_figure", "KEPT_COLOR", "MASKED_COLOR", "METRIC_PANELS"]

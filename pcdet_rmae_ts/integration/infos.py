"""OpenPCDet ``CustomDataset`` info files and ground-truth database for a config's own classes.

OpenPCDet's ``create_custom_infos`` entry point always writes to ``<OpenPCDet>/data/custom`` and
hard-codes the classes Vehicle/Pedestrian/Cyclist. This does the same job for any config: the
frames listed in ``ImageSets/<split>.txt`` under the config's ``DATA_PATH``, one info file per mode
of ``DATA_SPLIT`` (named by ``INFO_PATH``), and the gt database that ``gt_sampling`` reads
(``DB_INFO_PATH``), with OpenPCDet's CustomDataset (point reader) and points-in-boxes op; labels are
read with the evaluator's reader. Needs pcdet.
"""
from __future__ import annotations

import logging
import pickle
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np
from easydict import EasyDict
from tqdm import tqdm

from ..config import ConfigError, cfg_from_list, cfg_from_yaml_file
from ..evaluation import read_label_file

LOG = logging.getLogger(__name__)
DB_FOLDER = "gt_database"


@dataclass
class SplitSummary:
    """What one info file holds: frames and boxes per class (those outside CLASS_NAMES apart)."""

    split: str
    info_file: Path
    frames: int = 0
    boxes: Counter = field(default_factory=Counter)
    other_boxes: Counter = field(default_factory=Counter)

    def describe(self) -> str:
        per_class = ", ".join(f"{name} {n}" for name, n in sorted(self.boxes.items())) or "none"
        text = f"{self.split}: {self.frames} frames, boxes {per_class} -> {self.info_file}"
        if self.other_boxes:
            other = ", ".join(f"{name} {n}" for name, n in sorted(self.other_boxes.items()))
            text += f" (also labelled, not in CLASS_NAMES: {other})"
        return text


def load_dataset_config(cfg_file: str, set_cfgs: Optional[Sequence[str]] = None) -> EasyDict:
    """The dataset section of a model config (``DATA_CONFIG``) or a dataset config file itself, with
    ``CLASS_NAMES`` filled from the model config when the dataset section has none."""
    cfg = cfg_from_yaml_file(cfg_file)
    if set_cfgs:
        cfg_from_list(list(set_cfgs), cfg)
    data_cfg = cfg.DATA_CONFIG if "DATA_CONFIG" in cfg else cfg
    if "CLASS_NAMES" in cfg and "DATA_CONFIG" in cfg:
        data_cfg.CLASS_NAMES = list(cfg.CLASS_NAMES)
    for key in ("DATA_PATH", "CLASS_NAMES", "DATA_SPLIT", "INFO_PATH", "POINT_FEATURE_ENCODING"):
        if key not in data_cfg:
            raise ConfigError(f"the dataset config has no {key}", key=f"DATA_CONFIG.{key}", file=cfg_file,
                              fix="pass a CustomDataset model or dataset config (see cfgs/dataset_configs/)")
    return data_cfg


def _open_dataset(data_cfg: EasyDict, root: Path) -> Any:
    from ..integration.pcdet import _import_registries  # raises PcdetNotAvailable with the fix

    _import_registries()
    from pcdet.datasets.custom.custom_dataset import CustomDataset

    data_cfg.setdefault("MAP_CLASS_TO_KITTI", {})  # CustomDataset reads it; our evaluator does not need it
    quiet = logging.getLogger(f"{__name__}.pcdet")  # its "Total samples: 0" (no infos yet) would mislead
    quiet.setLevel(logging.WARNING)
    return CustomDataset(dataset_cfg=data_cfg, class_names=list(data_cfg.CLASS_NAMES), training=False,
                         root_path=root, logger=quiet)


def _read_ids(root: Path, split: str) -> List[str]:
    path = root / "ImageSets" / f"{split}.txt"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: list the frame ids of split '{split}' there, one per line "
                                f"(the stems of points/<id>.npy and labels/<id>.txt).")
    ids = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not ids:
        raise ConfigError(f"{path} lists no frames", key="DATA_CONFIG.DATA_SPLIT", fix="write the frame ids into it")
    return ids


def _read_label(root: Path, frame_id: str) -> tuple:
    """``(boxes (N, 7) float32, names (N,))`` of ``labels/<frame_id>.txt`` with the evaluator's reader
    (an empty file means no boxes; a malformed line is an error naming file and line)."""
    path = root / "labels" / f"{frame_id}.txt"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing (frame '{frame_id}' is listed in ImageSets)")
    anno = read_label_file(path)
    return anno["gt_boxes_lidar"].astype(np.float32), anno["name"]


def _check_columns(root: Path, frame_id: str, num_features: int) -> None:
    points = np.load(root / "points" / f"{frame_id}.npy", mmap_mode="r")
    if points.ndim != 2 or points.shape[1] != num_features:
        raise ConfigError(f"points/{frame_id}.npy has shape {points.shape} but src_feature_list names "
                          f"{num_features} columns", key="DATA_CONFIG.POINT_FEATURE_ENCODING.src_feature_list",
                          file=str(root), fix="make the list match the files' columns (or re-export the files)")


def build_split_infos(root: Path, split: str, num_features: int, class_names: Sequence[str],
                      info_file: Path) -> tuple:
    """Info dicts of one split in OpenPCDet's CustomDataset format, and their summary."""
    summary = SplitSummary(split=split, info_file=info_file)
    infos = []
    for frame_id in tqdm(_read_ids(root, split), desc=f"infos {split}", dynamic_ncols=True):
        boxes, names = _read_label(root, frame_id)
        infos.append({"point_cloud": {"num_features": num_features, "lidar_idx": frame_id},
                      "annos": {"name": names, "gt_boxes_lidar": boxes}})
        for name in names:
            (summary.boxes if name in class_names else summary.other_boxes)[str(name)] += 1
    summary.frames = len(infos)
    return infos, summary


def build_gt_database(dataset: Any, root: Path, infos: Sequence[Mapping], class_names: Sequence[str],
                      db_info_file: Path) -> Dict[str, int]:
    """Points inside each labelled box (``gt_database/<id>_<class>_<i>.bin``, box-centred, float32) and the
    db-info pickle ``gt_sampling`` reads; only boxes of ``class_names``. Returns boxes per class."""
    import torch
    from pcdet.ops.roiaware_pool3d import roiaware_pool3d_utils

    folder = root / DB_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    db_infos: Dict[str, list] = {name: [] for name in class_names}
    for info in tqdm(infos, desc="gt database", dynamic_ncols=True):
        frame_id = info["point_cloud"]["lidar_idx"]
        names, boxes = info["annos"]["name"], info["annos"]["gt_boxes_lidar"]
        keep = [i for i, name in enumerate(names) if name in db_infos]
        if not keep:
            continue
        points = dataset.get_lidar(frame_id).astype(np.float32)
        inside = roiaware_pool3d_utils.points_in_boxes_cpu(
            torch.from_numpy(points[:, :3]), torch.from_numpy(boxes[keep].astype(np.float32))).numpy()
        for row, i in enumerate(keep):
            gt_points = points[inside[row] > 0]
            gt_points[:, :3] -= boxes[i, :3]
            path = folder / f"{frame_id}_{names[i]}_{i}.bin"
            gt_points.tofile(path)
            db_infos[str(names[i])].append({"name": str(names[i]), "path": str(path.relative_to(root)), "gt_idx": i,
                                            "box3d_lidar": boxes[i], "num_points_in_gt": gt_points.shape[0]})
    with open(db_info_file, "wb") as f:
        pickle.dump(db_infos, f)
    return {name: len(items) for name, items in db_infos.items()}


def _db_info_file(data_cfg: Mapping, root: Path) -> Optional[Path]:
    """Where gt_sampling looks for the db infos (its first DB_INFO_PATH), or None without gt_sampling."""
    for aug in (data_cfg.get("DATA_AUGMENTOR") or {}).get("AUG_CONFIG_LIST", []) or []:
        if aug.get("NAME") == "gt_sampling" and aug.get("DB_INFO_PATH"):
            return root / aug["DB_INFO_PATH"][0]
    return None


def create_infos(data_cfg: EasyDict, logger: Optional[logging.Logger] = None) -> List[SplitSummary]:
    """Write the info file of every mode in ``DATA_SPLIT`` and, when the config samples ground truth,
    the gt database from the ``train`` infos. Returns one summary per info file."""
    logger = logger or LOG
    root = Path(data_cfg.DATA_PATH).expanduser().resolve()
    if not (root / "points").is_dir():
        raise FileNotFoundError(f"{root}/points is missing: DATA_PATH must be a CustomDataset folder "
                                "(points/<id>.npy, labels/<id>.txt, ImageSets/<split>.txt). Set it with "
                                "--set DATA_CONFIG.DATA_PATH /path/to/data")
    class_names = list(data_cfg.CLASS_NAMES)
    num_features = len(data_cfg.POINT_FEATURE_ENCODING.src_feature_list)
    dataset = _open_dataset(data_cfg, root)
    summaries, train_infos = [], None
    for mode, split in data_cfg.DATA_SPLIT.items():
        info_file = root / data_cfg.INFO_PATH[mode][0]
        _check_columns(root, _read_ids(root, split)[0], num_features)
        infos, summary = build_split_infos(root, split, num_features, class_names, info_file)
        with open(info_file, "wb") as f:
            pickle.dump(infos, f)
        logger.info("%s", summary.describe())
        summaries.append(summary)
        if mode == "train":
            train_infos = infos
    db_info_file = _db_info_file(data_cfg, root)
    if db_info_file is not None and train_infos is not None:
        counts = build_gt_database(dataset, root, train_infos, class_names, db_info_file)
        logger.info("gt database: %s -> %s and %s/", ", ".join(f"{k} {v}" for k, v in counts.items()),
                    db_info_file, root / DB_FOLDER)
    return summaries

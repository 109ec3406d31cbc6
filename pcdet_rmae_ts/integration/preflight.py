"""Config pre-flight check: finds, before any GPU time is spent, the config problems that make
stock OpenPCDet crash late or silently ignore a setting (``openpcdet-contract.md`` section 11).

Run as ``python tools/check_config.py CFG``; the launchers ``tools/train.py`` / ``tools/test.py``
run it too. Pretraining configs are also built by the pretraining engine's own constructors
(``_build_like_pretraining_engine``), so its startup validation is the single source of those
rules. Each finding names the file, the key path and the fix. Severities: ``error`` (the run
would crash), ``warning`` (a setting is silently ignored or means something else than it says),
``note`` (informational; does not fail the check).
"""
from __future__ import annotations

import copy
import logging
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, List, Mapping, Optional, Sequence

from ..backbone_keys import VALID_KEYS
from ..config import (
    BASE_CONFIG_KEY,
    ConfigError,
    cfg_from_yaml_file,
    check_known_keys,
    read_yaml_with_duplicates,
    resolve_base_config,
)

SEVERITIES = ("error", "warning", "note")
REGRESSION_EXCLUDED_HEADS = ("hm", "iou")
CENTERHEAD_ONLY_KEYS = ("USE_IOU_TO_RECTIFY_SCORE", "IOU_RECTIFIER")
NMS_SCALAR_KEYS = ("NMS_THRESH", "NMS_PRE_MAXSIZE", "NMS_POST_MAXSIZE")
PLUGIN_OPTIM_KEYS = ("DIFFERENTIAL_LR", "BACKBONE_LR_RATIO", "DENSE_HEAD_LR_RATIO", "POINT_HEAD_LR_RATIO",
                     "ROI_HEAD_LR_RATIO")


@dataclass(frozen=True)
class Finding:
    severity: str
    file: str
    key: str
    message: str
    fix: str

    def format(self) -> str:
        return f"{self.severity.upper():7s} {self.file}: {self.key}: {self.message}\n        fix: {self.fix}"


def _read_raw(path: Path) -> tuple:
    data, duplicates = read_yaml_with_duplicates(path)
    return data or {}, duplicates


def _config_files(cfg_file: Path) -> List[Path]:
    """``cfg_file`` and every ``_BASE_CONFIG_`` it names (any level), resolved as the plugin does."""
    files, pending = [], [cfg_file]
    while pending:
        path = pending.pop(0)
        if path in files:
            continue
        files.append(path)
        data, _ = _read_raw(path)
        for base in _base_entries(data):
            pending.append(resolve_base_config(base, path))
    return files


def _base_entries(node: Any) -> Iterable[str]:
    if isinstance(node, Mapping):
        for key, value in node.items():
            if key == BASE_CONFIG_KEY and isinstance(value, str):
                yield value
            else:
                yield from _base_entries(value)


class _Checker:
    def __init__(self, cfg_file: Path):
        self.cfg_file = cfg_file
        self.findings: List[Finding] = []

    def add(self, severity: str, file: Any, key: str, message: str, fix: str) -> None:
        self.findings.append(Finding(severity, str(file), key, message, fix))

    # ------------------------------------------------------------------ per file (raw YAML)
    def check_file(self, path: Path, class_names: Optional[Sequence[str]]) -> None:
        data, duplicates = _read_raw(path)
        for key, first, line in duplicates:
            self.add("warning", path, key, f"defined twice (lines {first} and {line}); PyYAML keeps only the "
                     f"block at line {line}, the first is silently ignored",
                     "merge the two blocks into one and delete the other")
        names = class_names or data.get("CLASS_NAMES")
        augmentor = data.get("DATA_AUGMENTOR") if isinstance(data.get("DATA_AUGMENTOR"), Mapping) else None
        prefix = "DATA_AUGMENTOR"
        if augmentor is None and isinstance(data.get("DATA_CONFIG"), Mapping):
            augmentor = data["DATA_CONFIG"].get("DATA_AUGMENTOR")
            prefix = "DATA_CONFIG.DATA_AUGMENTOR"
        if isinstance(augmentor, Mapping) and names:
            self._check_gt_sampling(path, f"{prefix}.AUG_CONFIG_LIST", augmentor.get("AUG_CONFIG_LIST") or [], names)
        data_path = data.get("DATA_PATH")
        if isinstance(data_path, str) and os.path.isabs(data_path) and not os.path.exists(data_path):
            self.add("warning", path, "DATA_PATH", f"absolute path '{data_path}' does not exist on this machine",
                     "point it at your dataset, or override it: --set DATA_CONFIG.DATA_PATH /path/to/data")

    def _check_gt_sampling(self, path: Path, key: str, aug_list: Sequence, class_names: Sequence[str]) -> None:
        for index, entry in enumerate(aug_list):
            if not isinstance(entry, Mapping) or entry.get("NAME") != "gt_sampling":
                continue
            where = f"{key}[{index}]"
            prepare = entry.get("PREPARE") or {}
            lists = [(f"{where}.PREPARE.filter_by_min_points", prepare.get("filter_by_min_points") or []),
                     (f"{where}.SAMPLE_GROUPS", entry.get("SAMPLE_GROUPS") or [])]
            for list_key, items in lists:
                unknown = [str(i).split(":")[0] for i in items if str(i).split(":")[0] not in class_names]
                if unknown:
                    self.add("warning", path, list_key, f"names {unknown} are not in CLASS_NAMES {list(class_names)}; "
                             f"OpenPCDet's DataBaseSampler silently ignores them",
                             f"remove {', '.join(repr(u + ':...') for u in unknown)} (or add the class to CLASS_NAMES)")
            backup = entry.get("BACKUP_DB_INFO")
            if backup and not isinstance(entry.get("DB_DATA_PATH"), list):
                self.add("note", path, f"{where}.BACKUP_DB_INFO",
                         "only used when the DB_INFO_PATH file is missing, and then it needs a DB_DATA_PATH list in "
                         "the gt_sampling entry itself (absent here), so that fallback would fail",
                         "create the gt database with tools/create_infos.py, or add DB_DATA_PATH: [<file>] "
                         "to the gt_sampling entry")

    # ------------------------------------------------------------------ merged config
    def check_merged(self, cfg: Mapping) -> None:
        model = cfg.get("MODEL") or {}
        backbone = model.get("BACKBONE_3D") or {}
        head = model.get("DENSE_HEAD")
        pretraining = bool(backbone.get("PRETRAINING", False))
        if backbone.get("NAME") == "RMAECMAEBackbonePhase1":
            self._check_backbone_keys(backbone)
        if pretraining and head:
            self.add("error", self.cfg_file, "MODEL.DENSE_HEAD", "a dense head is configured while "
                     "MODEL.BACKBONE_3D.PRETRAINING is True; the pretraining detector trains no head",
                     "remove DENSE_HEAD for pretraining, or set PRETRAINING: False to fine-tune")
        if model.get("NAME") == "RMAECMAEDetectorPhase1" and not pretraining and not head:
            self.add("error", self.cfg_file, "MODEL.DENSE_HEAD", "fine-tuning (PRETRAINING: False) needs a dense head",
                     "add a VoxelNeXtHead DENSE_HEAD section (see cfgs/custom_models/*finetune*.yaml)")
        if isinstance(head, Mapping):
            self._check_head(head, cfg.get("CLASS_NAMES") or [], backbone)
            self._check_post_center_range(head, (cfg.get("DATA_CONFIG") or {}).get("POINT_CLOUD_RANGE"))
        self._check_optimization(cfg.get("OPTIMIZATION") or {})
        if pretraining and backbone.get("NAME") == "RMAECMAEBackbonePhase1":
            self._check_pretraining_engine(cfg)

    def _check_backbone_keys(self, backbone: Mapping) -> None:
        try:  # the backbone's own rule (models.backbone.check_backbone_keys), from the leaf key list
            check_known_keys(backbone, VALID_KEYS, key_path="MODEL.BACKBONE_3D")
        except ConfigError as err:
            self.add("error", self.cfg_file, "MODEL.BACKBONE_3D", str(err), "correct or remove the key")

    def _check_head(self, head: Mapping, class_names: Sequence[str], backbone: Mapping) -> None:
        key = "MODEL.DENSE_HEAD"
        if "CLASS_AGNOSTIC" not in head:
            self.add("error", self.cfg_file, f"{key}.CLASS_AGNOSTIC", "missing; OpenPCDet reads it with attribute "
                     "access (AttributeError when building the model)", "add CLASS_AGNOSTIC: False")
        if head.get("NAME") != "VoxelNeXtHead":
            return
        groups = head.get("CLASS_NAMES_EACH_HEAD") or []
        covered = sorted(n for g in groups for n in g if n in class_names)
        if covered != sorted(class_names):
            self.add("error", self.cfg_file, f"{key}.CLASS_NAMES_EACH_HEAD", f"groups {groups} must cover "
                     f"CLASS_NAMES {list(class_names)} exactly once (VoxelNeXtHead asserts it)",
                     "list every class of CLASS_NAMES in exactly one group")
        shared = head.get("SHARED_CONV_CHANNEL", 128)
        out = backbone.get("OUT_CHANNEL", 128)
        if shared != out:
            self.add("error", self.cfg_file, f"{key}.SHARED_CONV_CHANNEL", f"{shared} but the backbone's "
                     f"OUT_CHANNEL is {out}; VoxelNeXtHead's convs take SHARED_CONV_CHANNEL inputs",
                     f"set SHARED_CONV_CHANNEL: {out}")
        self._check_code_weights(head, key)
        self._check_post_processing(head, key)

    def _check_code_weights(self, head: Mapping, key: str) -> None:
        sep = head.get("SEPARATE_HEAD_CFG") or {}
        order, heads = sep.get("HEAD_ORDER") or [], sep.get("HEAD_DICT") or {}
        try:
            channels = sum(int(heads[h]["out_channels"]) for h in order if h not in REGRESSION_EXCLUDED_HEADS)
        except (KeyError, TypeError, ValueError):
            self.add("error", self.cfg_file, f"{key}.SEPARATE_HEAD_CFG", "every HEAD_ORDER entry needs a HEAD_DICT "
                     "entry with out_channels", "add the missing HEAD_DICT entries")
            return
        weights = ((head.get("LOSS_CONFIG") or {}).get("LOSS_WEIGHTS") or {}).get("code_weights")
        if weights is not None and len(weights) != channels:
            parts = " + ".join(f"{h}({heads[h]['out_channels']})" for h in order if h not in REGRESSION_EXCLUDED_HEADS)
            self.add("error", self.cfg_file, f"{key}.LOSS_CONFIG.LOSS_WEIGHTS.code_weights",
                     f"has {len(weights)} entries but HEAD_ORDER gives {parts} = {channels} regression channels; "
                     f"VoxelNeXtHead.get_loss raises 'The size of tensor a ({channels}) must match the size of "
                     f"tensor b ({len(weights)})' on the first training step",
                     f"give {channels} weights, e.g. code_weights: {[1.0] * channels}")

    def _check_post_processing(self, head: Mapping, key: str) -> None:
        post = head.get("POST_PROCESSING") or {}
        for name in CENTERHEAD_ONLY_KEYS:
            if name in post:
                self.add("warning", self.cfg_file, f"{key}.POST_PROCESSING.{name}", "a CenterHead key; "
                         "VoxelNeXtHead never reads it (its IoU rectification needs IOU_BRANCH: True, RECTIFIER "
                         "and an 'iou' head)", f"remove {name}")
        nms = post.get("NMS_CONFIG") or {}
        if head.get("IOU_BRANCH", False):
            return
        for name in NMS_SCALAR_KEYS:
            value = nms.get(name)
            if isinstance(value, (list, tuple)):
                self.add("error", self.cfg_file, f"{key}.POST_PROCESSING.NMS_CONFIG.{name}",
                         f"is a per-class list {list(value)}, but without IOU_BRANCH VoxelNeXtHead runs "
                         f"class-agnostic NMS, which needs a scalar (TypeError as soon as a box passes "
                         f"SCORE_THRESH, i.e. at evaluation)", f"use one number, e.g. {name}: {value[0]}")

    def _check_post_center_range(self, head: Mapping, point_cloud_range: Any) -> None:
        """The head drops every predicted box whose centre lies outside POST_CENTER_LIMIT_RANGE, while
        training targets are boxes anywhere in POINT_CLOUD_RANGE (x, y and z alike: a z window that
        is too tight drops machines on a raised bench or a sensor mounted higher than assumed)."""
        limit = (head.get("POST_PROCESSING") or {}).get("POST_CENTER_LIMIT_RANGE")
        key = "MODEL.DENSE_HEAD.POST_PROCESSING.POST_CENTER_LIMIT_RANGE"
        if not _is_box(limit) or not _is_box(point_cloud_range):
            return
        limit, pcr = [float(v) for v in limit], [float(v) for v in point_cloud_range]
        short = [axis for i, axis in enumerate("xyz") if limit[i] > pcr[i] or limit[i + 3] < pcr[i + 3]]
        if not short:
            return
        cover = [min(limit[i], pcr[i]) for i in range(3)] + [max(limit[i + 3], pcr[i + 3]) for i in range(3)]
        self.add("warning", self.cfg_file, key,
                 f"{_fmt(limit)} is narrower than DATA_CONFIG.POINT_CLOUD_RANGE {_fmt(pcr)} in "
                 f"{', '.join(short)}: the head silently drops every predicted box whose centre lies outside "
                 f"it, so objects there (trained on, present in the evaluation) are never detected",
                 f"set POST_CENTER_LIMIT_RANGE: {_fmt(cover)} (at least the point-cloud range)")

    def _check_pretraining_engine(self, cfg: Mapping) -> None:
        """Parse the data config and build model, optimizer and schedule with the pretraining engine's
        own constructors, so every rule it enforces at startup is reported here (one source of truth)."""
        try:
            _build_like_pretraining_engine(cfg)
        except ImportError as err:  # spconv missing: the engine could not run either
            self.add("note", self.cfg_file, "MODEL.BACKBONE_3D", f"the pretraining engine's model checks were "
                     f"skipped: {err}", "install spconv (pip install -e '.[cpu]' or a CUDA spconv extra)")
        except _EngineRejected as rejected:
            err = rejected.error
            if isinstance(err, ConfigError):
                self.add("error", err.file or self.cfg_file, err.key or rejected.section,
                         f"the pretraining engine (tools/train_rmae_cmae_phase1.py) rejects this config at "
                         f"startup: {_config_error_text(err)}", err.fix or "correct the key named in the message")
                return
            validated = isinstance(err, (ValueError, KeyError))
            key, text = _key_of(str(err), rejected.section, cfg), str(err)
            if text.startswith(key + ": "):  # the finding shows the key already
                text = text[len(key) + 2:]
            what = "rejects this config" if validated else f"crashes on this config ({type(err).__name__})"
            fix = f"change {key} as the message says" if validated else "; ".join(
                ["correct the config"] + ([rejected.detail] if rejected.detail else []))
            self.add("error", self.cfg_file, key,
                     f"the pretraining engine (tools/train_rmae_cmae_phase1.py) {what} at startup: {text}", fix)

    def _check_optimization(self, optim: Mapping) -> None:
        used = [k for k in PLUGIN_OPTIM_KEYS if k in optim]
        if used:
            self.add("note", self.cfg_file, "OPTIMIZATION." + "/".join(used), "read by pcdet_rmae_ts only; stock "
                     "OpenPCDet's train.py ignores them", "train with this repository's tools/train.py or "
                     "scripts/dist_train.sh (they install the differential-LR hook)")
        if optim.get("LR_WARMUP") and optim.get("OPTIMIZER") in ("adam", "sgd"):
            self.add("error", self.cfg_file, "OPTIMIZATION.LR_WARMUP", "with adam/sgd, stock build_scheduler "
                     "calls len() on an int (TypeError at startup)", "set LR_WARMUP: False or use adam_onecycle")


class _EngineRejected(Exception):
    """A constructor of the pretraining engine failed; ``section`` is the config section it parses."""

    def __init__(self, section: str, error: Exception, detail: str = ""):
        super().__init__(str(error))
        self.section, self.error, self.detail = section, error, detail


_KEY_PATH = re.compile(r"^([A-Z][A-Z0-9_]*(?:\.[A-Za-z0-9_]+|\[\d+\])+)")


def _key_of(message: str, section: str, cfg: Mapping) -> str:
    """The key path an engine message names: a leading dotted path ('DATA_CONFIG.X[0]: ...'), or a
    leading key of ``section`` ('MASKED_RATIO must be ...' -> 'MODEL.BACKBONE_3D.MASKED_RATIO')."""
    match = _KEY_PATH.match(message)
    if match:
        return match.group(1)
    node: Any = cfg
    for part in section.split("."):
        node = node.get(part) if isinstance(node, Mapping) else None
    first = message.split(" ", 1)[0].rstrip(":")
    return f"{section}.{first}" if isinstance(node, Mapping) and first in node else section


def _config_error_text(err: ConfigError) -> str:
    """A ConfigError's own message, without the key and file it adds (the finding shows those)."""
    text = str(err)
    prefix = f"config key '{err.key}': " if err.key else ""
    if prefix and text.startswith(prefix):
        text = text[len(prefix):]
    return text.split(" (file: ", 1)[0]


def _is_box(value: Any) -> bool:
    """A six-number [x_min, y_min, z_min, x_max, y_max, z_max]."""
    return isinstance(value, (list, tuple)) and len(value) == 6 and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)


def _fmt(values: Sequence[float]) -> str:
    return "[" + ", ".join(f"{float(v):g}" for v in values) + "]"


def _build_like_pretraining_engine(cfg: Mapping) -> None:
    """Run ``engine.pretrain.build_trainer``'s constructors on ``cfg`` without data or a GPU:
    ``PretrainDataset`` (over an empty stand-in folder: its constructor lists files but reads none;
    DATA_PATH is checked on its own), ``PretrainModel.from_config``, the optimizer and the schedule.
    Raises ``_EngineRejected`` naming the section whose constructor failed. The global torch RNG is
    left as it was (the launchers may seed it before this runs)."""
    import torch

    from ..data.dataset import PretrainDataset
    from ..models.pretrain_model import PretrainModel
    from ..optim import build_scheduler, create_optimizer_with_differential_lr

    cfg = copy.deepcopy(cfg)
    quiet = logging.getLogger(__name__ + ".engine_build")  # the stand-in dataset's log lines mean nothing
    quiet.propagate = False
    if not quiet.handlers:
        quiet.addHandler(logging.NullHandler())
    with tempfile.TemporaryDirectory() as stand_in, torch.random.fork_rng(devices=[]):
        (Path(stand_in) / "frame.npy").touch()
        try:
            dataset = PretrainDataset(cfg["DATA_CONFIG"], cfg.get("CLASS_NAMES"), training=True,
                                      root_path=stand_in, logger=quiet)
        except ImportError:
            raise
        except Exception as err:  # noqa: BLE001 - whatever fails here stops the engine at startup
            raise _EngineRejected("DATA_CONFIG", err) from err
        detail = "" if dataset.grid_size is None else (
            f"the data pipeline gives grid_size {[int(n) for n in dataset.grid_size]} (x, y, z) from "
            f"DATA_CONFIG.POINT_CLOUD_RANGE {_fmt(dataset.point_cloud_range)} and VOXEL_SIZE "
            f"{_fmt(dataset.voxel_size)}")
        section = "MODEL.BACKBONE_3D"
        try:
            model = PretrainModel.from_config(cfg, dataset)
            section = "OPTIMIZATION"
            optim_cfg = cfg["OPTIMIZATION"]
            optimizer = create_optimizer_with_differential_lr(model, optim_cfg, logger=quiet)
            build_scheduler(optimizer, 1, int(optim_cfg.get("NUM_EPOCHS") or 1), -1, optim_cfg)
        except ImportError:
            raise
        except Exception as err:  # noqa: BLE001 - whatever fails here stops the engine at startup
            raise _EngineRejected(section, err, detail) from err


def check_config(cfg_file: str | os.PathLike) -> List[Finding]:
    """All findings for ``cfg_file`` (a model config with ``_BASE_CONFIG_`` or a dataset config)."""
    cfg_file = Path(cfg_file)
    checker = _Checker(cfg_file)
    try:
        files = _config_files(cfg_file)
        cfg = cfg_from_yaml_file(cfg_file)
    except ConfigError as err:
        checker.add("error", err.file or cfg_file, err.key or "-", str(err), err.fix or "correct the file")
        return checker.findings
    for path in files:
        for base in _base_entries(_read_raw(path)[0]):
            if not os.path.isabs(base) and not (Path.cwd() / base).is_file():
                checker.add("note", path, BASE_CONFIG_KEY, f"'{base}' is not found relative to the current "
                            f"directory, which is the only place stock OpenPCDet looks; the plugin found "
                            f"{resolve_base_config(base, path)}", "run from the repository root, or use this "
                            "repository's tools/train.py (same lookup as the plugin)")
    class_names = cfg.get("CLASS_NAMES")
    for path in files:
        checker.check_file(path, class_names)
    checker.check_merged(cfg)
    return checker.findings


def format_findings(cfg_file: str | os.PathLike, findings: Sequence[Finding]) -> str:
    counts = {s: sum(f.severity == s for f in findings) for s in SEVERITIES}
    head = (f"pre-flight check of {cfg_file}: {counts['error']} error(s), {counts['warning']} warning(s), "
            f"{counts['note']} note(s)")
    return "\n".join([head] + [f.format() for f in findings])


def failed(findings: Sequence[Finding], strict: bool = False) -> bool:
    bad = ("error", "warning") if strict else ("error",)
    return any(f.severity in bad for f in findings)

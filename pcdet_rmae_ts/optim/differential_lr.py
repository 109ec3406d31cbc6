"""Differential learning rates for fine-tuning a pretrained backbone in OpenPCDet.

Parameter groups carry an ``lr_scale``; the schedulers (OpenPCDet's one-cycle, or step
decay with warm-up) compute one base LR per global iteration and multiply it per group.
"""
from __future__ import annotations

import difflib
import logging
import math
from dataclasses import asdict, dataclass
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from ..config import ConfigError, check_known_keys, config_source, nearest_key
from ..schedules import cosine_between

_LOG = logging.getLogger(__name__)

BACKBONE_PREFIXES = ("vfe.", "backbone_3d.", "map_to_bev_module.", "backbone_2d.")
# VoxelNeXt encoder stages from the input (deepest) to the output (top); used by LAYER_DECAY.
BACKBONE_LAYERS = ("conv_input", "conv1", "conv2", "conv3", "conv4", "conv5", "conv6", "conv_out",
                   "shared_conv")
BACKBONE_GROUP = "backbone"
DEFAULT_GROUP = "default"
OPTIMIZERS = ("adam", "adamw", "sgd", "adam_onecycle")
DIFFERENTIAL_KEYS = ("ENABLED", "GROUPS", "DEFAULT_LR_RATIO", "LAYER_DECAY", "NO_DECAY_NORM_BIAS",
                     "FREEZE_BACKBONE_EPOCHS")
GROUP_KEYS = ("NAME", "PREFIXES", "LR_RATIO", "WEIGHT_DECAY")
RATIO_KEYS = ("BACKBONE_LR_RATIO", "DENSE_HEAD_LR_RATIO", "POINT_HEAD_LR_RATIO", "ROI_HEAD_LR_RATIO")


@dataclass(frozen=True)
class GroupSpec:
    """One configured group: parameters whose name starts with one of ``prefixes``."""

    name: str
    prefixes: tuple[str, ...]
    lr_ratio: float
    weight_decay: float | None = None


@dataclass(frozen=True)
class DifferentialLRSpec:
    """The parsed ``OPTIMIZATION.DIFFERENTIAL_LR`` section (``enabled=False``: one group, ratio 1)."""

    enabled: bool
    groups: tuple[GroupSpec, ...] = ()
    default_lr_ratio: float = 1.0
    layer_decay: float | None = None
    no_decay_norm_bias: bool = False
    freeze_backbone_epochs: int = 0


# ----------------------------------------------------------------------------- config parsing
def _number(value: Any, *, key: str, source: Any, low: float = 0.0, high: float = math.inf,
            integer: bool = False) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if ok and integer and float(value) != int(value):
        ok = False
    if not ok or not (low <= value <= high):
        kind = "an integer" if integer else "a number"
        raise ConfigError(f"must be {kind} in [{low}, {high}], got {value!r}", key=key,
                          file=config_source(source), fix=f"set {key} to {kind} in [{low}, {high}]")
    return int(value) if integer else float(value)


def uses_differential_lr(optim_cfg: Mapping) -> bool:
    """True when ``OPTIMIZATION.DIFFERENTIAL_LR`` is ``True`` or a mapping whose ``ENABLED`` is not False."""
    value = optim_cfg.get("DIFFERENTIAL_LR", False)
    if isinstance(value, Mapping):
        return bool(value.get("ENABLED", True))
    return value is True


def _seed_groups(optim_cfg: Mapping) -> tuple[GroupSpec, ...]:
    """Groups of the flat seed keys ``BACKBONE_LR_RATIO`` (0.1), ``DENSE_HEAD_LR_RATIO`` (2.0), ..."""
    for key in optim_cfg:
        if key in RATIO_KEYS:
            continue
        near = nearest_key(key, RATIO_KEYS)
        close = near is not None and difflib.SequenceMatcher(None, str(key), near).ratio() >= 0.85
        if str(key).endswith("_LR_RATIO") or close:
            raise ConfigError("unknown learning-rate ratio key", key=f"OPTIMIZATION.{key}",
                              file=config_source(optim_cfg), fix=f"did you mean '{near or RATIO_KEYS[0]}'?")

    def ratio(key: str, default: float) -> float:
        return _number(optim_cfg.get(key, default), key=f"OPTIMIZATION.{key}", source=optim_cfg)

    dense = ratio("DENSE_HEAD_LR_RATIO", 2.0)
    return (GroupSpec(BACKBONE_GROUP, BACKBONE_PREFIXES, ratio("BACKBONE_LR_RATIO", 0.1)),
            GroupSpec("dense_head", ("dense_head.",), dense),
            GroupSpec("point_head", ("point_head.",), ratio("POINT_HEAD_LR_RATIO", dense)),
            GroupSpec("roi_head", ("roi_head.",), ratio("ROI_HEAD_LR_RATIO", dense)))


def _parse_group(entry: Any, index: int, source: Any) -> GroupSpec:
    where = f"OPTIMIZATION.DIFFERENTIAL_LR.GROUPS[{index}]"
    if not isinstance(entry, Mapping):
        raise ConfigError(f"must be a mapping with {', '.join(GROUP_KEYS)}, got {entry!r}", key=where,
                          file=config_source(source),
                          fix="write each group as {NAME: ..., PREFIXES: [...], LR_RATIO: ...}")
    check_known_keys(entry, GROUP_KEYS, key_path=where, file=config_source(source))
    for required in ("NAME", "PREFIXES", "LR_RATIO"):
        if required not in entry:
            raise ConfigError("missing key", key=f"{where}.{required}", file=config_source(source),
                              fix=f"add {required} to the group")
    prefixes = entry["PREFIXES"]
    prefixes = [prefixes] if isinstance(prefixes, str) else list(prefixes)
    if not prefixes or not all(isinstance(p, str) and p for p in prefixes):
        raise ConfigError(f"must be a non-empty list of name prefixes, got {entry['PREFIXES']!r}",
                          key=f"{where}.PREFIXES", file=config_source(source), fix="e.g. PREFIXES: ['dense_head.']")
    wd = entry.get("WEIGHT_DECAY")
    return GroupSpec(name=str(entry["NAME"]), prefixes=tuple(prefixes),
                     lr_ratio=_number(entry["LR_RATIO"], key=f"{where}.LR_RATIO", source=source),
                     weight_decay=None if wd is None else _number(wd, key=f"{where}.WEIGHT_DECAY", source=source))


def _check_groups(groups: Sequence[GroupSpec], source: Any) -> None:
    names = [g.name for g in groups]
    prefixes = [p for g in groups for p in g.prefixes]
    for label, values in (("NAME", names), ("PREFIXES", prefixes)):
        dup = sorted({v for v in values if values.count(v) > 1})
        if dup:
            raise ConfigError(f"{dup} appear(s) in several groups", key=f"OPTIMIZATION.DIFFERENTIAL_LR.GROUPS.{label}",
                              file=config_source(source), fix="give every group its own names and prefixes")


def parse_differential_lr(optim_cfg: Mapping) -> DifferentialLRSpec:
    """Validate ``OPTIMIZATION.DIFFERENTIAL_LR`` (``True``/``False``/mapping) into a spec.

    ``True`` is the seed form (groups from ``*_LR_RATIO`` keys). A mapping accepts
    ``ENABLED`` (True), ``GROUPS`` (default: the seed groups), ``DEFAULT_LR_RATIO`` (1.0),
    ``LAYER_DECAY``, ``NO_DECAY_NORM_BIAS`` (False), ``FREEZE_BACKBONE_EPOCHS`` (0).
    Unknown keys raise ConfigError naming the nearest valid key.
    """
    value = optim_cfg.get("DIFFERENTIAL_LR", False)
    src = optim_cfg
    if value is None or value is False:
        return DifferentialLRSpec(enabled=False)
    if value is True:
        return DifferentialLRSpec(enabled=True, groups=_seed_groups(optim_cfg))
    if not isinstance(value, Mapping):
        raise ConfigError(f"must be True, False or a mapping, got {value!r}", key="OPTIMIZATION.DIFFERENTIAL_LR",
                          file=config_source(src),
                          fix="write DIFFERENTIAL_LR: True or DIFFERENTIAL_LR: {ENABLED: True, ...}")
    check_known_keys(value, DIFFERENTIAL_KEYS, key_path="OPTIMIZATION.DIFFERENTIAL_LR", file=config_source(src))
    if not value.get("ENABLED", True):
        return DifferentialLRSpec(enabled=False)
    raw_groups = value.get("GROUPS")
    groups = _seed_groups(optim_cfg) if raw_groups is None else tuple(
        _parse_group(entry, i, src) for i, entry in enumerate(raw_groups))
    _check_groups(groups, src)
    key = "OPTIMIZATION.DIFFERENTIAL_LR."
    decay = value.get("LAYER_DECAY")
    freeze = _number(value.get("FREEZE_BACKBONE_EPOCHS", 0), key=key + "FREEZE_BACKBONE_EPOCHS", source=src,
                     integer=True)
    if (decay is not None or freeze) and BACKBONE_GROUP not in [g.name for g in groups]:
        raise ConfigError(f"LAYER_DECAY / FREEZE_BACKBONE_EPOCHS act on the group named '{BACKBONE_GROUP}', "
                          "which GROUPS does not define", key=key + "GROUPS", file=config_source(src),
                          fix=f"name the backbone group '{BACKBONE_GROUP}'")
    return DifferentialLRSpec(
        enabled=True, groups=groups,
        default_lr_ratio=_number(value.get("DEFAULT_LR_RATIO", 1.0), key=key + "DEFAULT_LR_RATIO", source=src),
        layer_decay=None if decay is None else _number(decay, key=key + "LAYER_DECAY", source=src, low=1e-6, high=1.0),
        no_decay_norm_bias=bool(value.get("NO_DECAY_NORM_BIAS", False)),
        freeze_backbone_epochs=freeze)


# ----------------------------------------------------------------------------- parameter groups
def _match(name: str, groups: Sequence[GroupSpec]) -> GroupSpec | None:
    """The group with the longest prefix of ``name`` (so a sub-prefix can override a wide one)."""
    best, best_len = None, -1
    for group in groups:
        for prefix in group.prefixes:
            if name.startswith(prefix) and len(prefix) > best_len:
                best, best_len = group, len(prefix)
    return best


def backbone_layer_depth(name: str) -> tuple[str, int]:
    """(label, depth from the top) of a backbone parameter, for ``LAYER_DECAY``.

    ``shared_conv`` is depth 0, ``conv_out`` 1, ..., ``conv_input`` 8 (the first name
    component that is a VoxelNeXt stage decides); ``vfe.*`` is deeper still (9). Other
    backbone parameters (``map_to_bev_module``, ``backbone_2d``, decoders, mask tokens)
    sit at the top: ('', 0).
    """
    for part in name.split("."):
        if part in BACKBONE_LAYERS:
            return part, len(BACKBONE_LAYERS) - 1 - BACKBONE_LAYERS.index(part)
    if name.startswith("vfe."):
        return "vfe", len(BACKBONE_LAYERS)
    return "", 0


def _placement(name: str, param: nn.Parameter, spec: DifferentialLRSpec,
               weight_decay: float) -> tuple[str, float, float, int]:
    """(group name, lr_scale, weight decay, freeze epochs) of one parameter."""
    if not spec.enabled:
        return "all", 1.0, weight_decay, 0
    group = _match(name, spec.groups)
    if group is None:
        label, scale, wd, freeze = DEFAULT_GROUP, spec.default_lr_ratio, weight_decay, 0
    else:
        label, scale = group.name, group.lr_ratio
        wd = weight_decay if group.weight_decay is None else group.weight_decay
        freeze = spec.freeze_backbone_epochs if group.name == BACKBONE_GROUP else 0
        if group.name == BACKBONE_GROUP and spec.layer_decay is not None:
            layer, depth = backbone_layer_depth(name)
            label = f"{label}.{layer}" if layer else label
            scale = scale * spec.layer_decay ** depth
    if spec.no_decay_norm_bias and param.ndim <= 1:  # biases and norm weights/scales
        label, wd = f"{label}.no_decay", 0.0
    return label, scale, wd, freeze


def build_param_groups(model: nn.Module, spec: DifferentialLRSpec, *, weight_decay: float) -> list[dict[str, Any]]:
    """Torch param groups (without ``lr``) for every trainable parameter of ``model``.

    Uses ``named_parameters()``, so parameters owned directly by a module with children
    (e.g. a mask token) are included; ``requires_grad=False`` parameters are left out.
    Each dict has ``params``, ``name``, ``lr_scale``, ``weight_decay`` and ``freeze_epochs``;
    groups appear in the order of their first parameter.
    """
    groups: dict[str, dict[str, Any]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        label, scale, wd, freeze = _placement(name, param, spec, weight_decay)
        group = groups.setdefault(label, {"params": [], "name": label, "lr_scale": float(scale),
                                          "weight_decay": float(wd), "freeze_epochs": int(freeze)})
        group["params"].append(param)
    if not groups:
        raise ValueError(f"{type(model).__name__} has no trainable parameters; nothing to optimise")
    return list(groups.values())


def _log_groups(groups: Sequence[Mapping], *, base_lr: float, optimizer: str, log: logging.Logger) -> None:
    log.info("optimizer %s, base LR %.4g, %d parameter groups:", optimizer, base_lr, len(groups))
    for g in groups:
        numel = sum(p.numel() for p in g["params"])
        frozen = f", LR 0 for the first {g['freeze_epochs']} epochs" if g["freeze_epochs"] else ""
        log.info("  group %-28s %4d tensors %10d params  ratio %-8.4g LR %-10.4g weight_decay %.4g%s",
                 g["name"], len(g["params"]), numel, g["lr_scale"], base_lr * g["lr_scale"], g["weight_decay"], frozen)


# ----------------------------------------------------------------------------- optimizer
def _optimizer_name(optim_cfg: Mapping) -> str:
    name = optim_cfg.get("OPTIMIZER")
    if name not in OPTIMIZERS:
        near = nearest_key(str(name), OPTIMIZERS)
        raise ConfigError(f"unsupported optimizer {name!r}", key="OPTIMIZATION.OPTIMIZER",
                          file=config_source(optim_cfg),
                          fix=f"use one of {', '.join(OPTIMIZERS)}" + (f" (did you mean '{near}'?)" if near else ""))
    return name


def _betas(optim_cfg: Mapping, default: tuple[float, float]) -> tuple[float, float]:
    betas = optim_cfg.get("BETAS", default)
    if len(betas) != 2:
        raise ConfigError(f"needs two values, got {betas!r}", key="OPTIMIZATION.BETAS",
                          file=config_source(optim_cfg), fix="e.g. BETAS: [0.9, 0.99]")
    return (_number(betas[0], key="OPTIMIZATION.BETAS", source=optim_cfg, high=1.0),
            _number(betas[1], key="OPTIMIZATION.BETAS", source=optim_cfg, high=1.0))


def create_optimizer_with_differential_lr(model: nn.Module, optim_cfg: Mapping,
                                          logger: logging.Logger | None = None) -> torch.optim.Optimizer:
    """A torch optimizer whose param groups follow ``OPTIMIZATION.DIFFERENTIAL_LR``.

    ``adam``: Adam with L2 ``WEIGHT_DECAY`` (as OpenPCDet); ``sgd``: SGD with ``MOMENTUM``;
    ``adamw``: AdamW; ``adam_onecycle``: AdamW with ``BETAS`` (0.9, 0.99) — its decoupled
    decay ``p *= 1 - lr_group * wd`` before the Adam step is exactly fastai's
    ``OptimWrapper(true_wd=True, bn_wd=True)`` that OpenPCDet uses, with each group's own LR.
    Group ``lr`` starts at ``LR * lr_scale``; ``optimizer.lr`` holds the base (ratio 1.0) LR,
    which OpenPCDet's loop logs. With ``DIFFERENTIAL_LR`` off there is one group ``all``.
    """
    log = logger or _LOG
    name = _optimizer_name(optim_cfg)
    if "LR" not in optim_cfg:
        raise ConfigError("missing", key="OPTIMIZATION.LR", file=config_source(optim_cfg), fix="set LR, e.g. 0.003")
    lr = _number(optim_cfg["LR"], key="OPTIMIZATION.LR", source=optim_cfg, low=1e-12)
    wd = _number(optim_cfg.get("WEIGHT_DECAY", 0.0), key="OPTIMIZATION.WEIGHT_DECAY", source=optim_cfg)
    groups = build_param_groups(model, parse_differential_lr(optim_cfg), weight_decay=wd)
    for group in groups:
        group["lr"] = lr * group["lr_scale"]
    if name == "adam":
        optimizer = torch.optim.Adam(groups, lr=lr, betas=_betas(optim_cfg, (0.9, 0.999)))
    elif name == "adamw":
        optimizer = torch.optim.AdamW(groups, lr=lr, betas=_betas(optim_cfg, (0.9, 0.999)))
    elif name == "sgd":
        momentum = _number(optim_cfg.get("MOMENTUM", 0.9), key="OPTIMIZATION.MOMENTUM", source=optim_cfg)
        optimizer = torch.optim.SGD(groups, lr=lr, momentum=momentum)
    else:
        optimizer = torch.optim.AdamW(groups, lr=lr, betas=_betas(optim_cfg, (0.9, 0.99)))
    optimizer.lr = lr  # what OpenPCDet's loop shows (float(optimizer.lr)); the scheduler keeps it current
    _log_groups(optimizer.param_groups, base_lr=lr, optimizer=name, log=log)
    return optimizer


# ----------------------------------------------------------------------------- schedules
def _required(optim_cfg: Mapping, key: str) -> Any:
    if key not in optim_cfg:
        raise ConfigError("missing", key=f"OPTIMIZATION.{key}", file=config_source(optim_cfg),
                          fix=f"add OPTIMIZATION.{key} (see the shipped fine-tune config)")
    return optim_cfg[key]


@dataclass(frozen=True)
class OneCycleSchedule:
    """OpenPCDet's ``OneCycle`` as a pure function of the global iteration.

    LR: cosine from ``lr_max/div_factor`` to ``lr_max`` over the first
    ``int(total_steps * pct_start)`` steps, then cosine to ``lr_max/div_factor/1e4`` at
    ``total_steps``; momentum: ``moms[0] -> moms[1]`` then back. Iterations past the
    end stay at the final values (stock would restart the cosine); a first phase of
    length 0 starts at the peak (stock raises ZeroDivisionError).
    """

    total_steps: int
    lr_max: float
    div_factor: float
    pct_start: float
    moms: tuple[float, float]

    @classmethod
    def from_cfg(cls, optim_cfg: Mapping, total_steps: int) -> OneCycleSchedule:
        moms = list(_required(optim_cfg, "MOMS"))
        if len(moms) != 2:
            raise ConfigError(f"needs two values, got {moms!r}", key="OPTIMIZATION.MOMS",
                              file=config_source(optim_cfg), fix="e.g. MOMS: [0.95, 0.85]")

        def num(key: str, **bounds: float) -> float:
            return _number(_required(optim_cfg, key), key=f"OPTIMIZATION.{key}", source=optim_cfg, **bounds)

        return cls(total_steps=int(total_steps), lr_max=num("LR", low=1e-12), div_factor=num("DIV_FACTOR", low=1e-12),
                   pct_start=num("PCT_START", high=1.0),
                   moms=(float(moms[0]), float(moms[1])))

    def _phase(self, it: int) -> tuple[bool, float]:
        """(in the rising phase?, fraction of that phase done)."""
        split = int(self.total_steps * self.pct_start)
        it = max(int(it), 0)
        if it < split:
            return True, it / split
        rest = self.total_steps - split
        return False, min((it - split) / rest, 1.0) if rest > 0 else 1.0

    def lr_at(self, it: int) -> float:
        low = self.lr_max / self.div_factor
        rising, pct = self._phase(it)
        return cosine_between(low, self.lr_max, pct) if rising else cosine_between(self.lr_max, low / 1e4, pct)

    def momentum_at(self, it: int) -> float | None:
        rising, pct = self._phase(it)
        high, low = self.moms
        return cosine_between(high, low, pct) if rising else cosine_between(low, high, pct)


@dataclass(frozen=True)
class StepDecaySchedule:
    """OpenPCDet's ``adam``/``sgd`` schedule as a pure function of the global iteration.

    ``LR * LR_DECAY ** (#DECAY_STEP_LIST epochs passed)``, floored at ``LR_CLIP``; with
    ``LR_WARMUP`` the first ``WARMUP_EPOCH`` epochs instead rise by cosine from
    ``LR/DIV_FACTOR`` to ``LR`` (OpenPCDet's ``CosineWarmupLR``, whose floor is applied to
    the base LR here so every group keeps its ratio).
    """

    lr: float
    decay_iters: tuple[int, ...]
    lr_decay: float
    lr_clip: float
    warmup_iters: int = 0
    warmup_start: float = 0.0

    @classmethod
    def from_cfg(cls, optim_cfg: Mapping, iters_per_epoch: int) -> StepDecaySchedule:
        lr = _number(_required(optim_cfg, "LR"), key="OPTIMIZATION.LR", source=optim_cfg, low=1e-12)
        decay_epochs = list(_required(optim_cfg, "DECAY_STEP_LIST"))
        warmup = bool(optim_cfg.get("LR_WARMUP", False))
        warmup_epochs = _number(optim_cfg.get("WARMUP_EPOCH", 0), key="OPTIMIZATION.WARMUP_EPOCH",
                                source=optim_cfg, integer=True) if warmup else 0
        div = _number(optim_cfg.get("DIV_FACTOR", 1.0), key="OPTIMIZATION.DIV_FACTOR", source=optim_cfg, low=1e-12)
        return cls(lr=lr, decay_iters=tuple(int(e * iters_per_epoch) for e in decay_epochs),
                   lr_decay=_number(optim_cfg.get("LR_DECAY", 1.0), key="OPTIMIZATION.LR_DECAY", source=optim_cfg),
                   lr_clip=_number(optim_cfg.get("LR_CLIP", 0.0), key="OPTIMIZATION.LR_CLIP", source=optim_cfg),
                   warmup_iters=int(warmup_epochs * iters_per_epoch), warmup_start=lr / div)

    def lr_at(self, it: int) -> float:
        it = max(int(it), 0)
        if it < self.warmup_iters:
            return cosine_between(self.warmup_start, self.lr, it / self.warmup_iters)
        factor = 1.0
        for decay_it in self.decay_iters:
            if it >= decay_it:
                factor *= self.lr_decay
        return self.lr * max(factor, self.lr_clip / self.lr)

    def momentum_at(self, it: int) -> float | None:
        return None


# ----------------------------------------------------------------------------- scheduler
def _set_momentum(group: dict[str, Any], momentum: float) -> None:
    if "betas" in group:
        group["betas"] = (float(momentum), float(group["betas"][1]))
    elif "momentum" in group:
        group["momentum"] = float(momentum)


class DifferentialLRScheduler:
    """Sets every param group's LR to ``schedule(it) * lr_scale`` (0 while its backbone is frozen).

    Fits OpenPCDet's loop: ``step(it, epoch=None)`` with the global iteration, called
    before each forward (``epoch`` defaults to ``it // total_iters_each_epoch``). Each
    step also writes the base (ratio 1.0) LR to ``optimizer.lr``, which is what the
    loop logs as the learning rate; :meth:`get_group_lrs` gives every group's LR.
    ``state_dict()`` holds only Python ints/floats (``torch.load(weights_only=True)`` safe).
    Group ratios are read from ``param_groups`` at every step, so after
    ``optimizer.load_state_dict`` the checkpoint's ``lr_scale`` values apply.
    The constructor applies the LRs of iteration ``max(last_epoch, 0) * total_iters_each_epoch``;
    OpenPCDet's loop then calls ``step`` with the true global iteration before every forward.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, schedule: Any, *, total_iters_each_epoch: int,
                 last_epoch: int = -1) -> None:
        self.optimizer = optimizer
        self.schedule = schedule
        self.total_iters_each_epoch = int(total_iters_each_epoch)
        self.last_it = -1
        self.last_epoch = -1
        self.base_lr = 0.0
        start_epoch = max(int(last_epoch), 0)
        self._apply(start_epoch * self.total_iters_each_epoch, start_epoch)

    def step(self, it: int | None = None, epoch: int | None = None) -> None:
        it = self.last_it + 1 if it is None else int(it)
        epoch = it // self.total_iters_each_epoch if epoch is None else int(epoch)
        self._apply(it, epoch)

    def _apply(self, it: int, epoch: int) -> None:
        base = float(self.schedule.lr_at(it))
        momentum = self.schedule.momentum_at(it)
        for group in self.optimizer.param_groups:
            frozen = epoch < int(group.get("freeze_epochs", 0))
            group["lr"] = 0.0 if frozen else base * float(group.get("lr_scale", 1.0))
            if momentum is not None:
                _set_momentum(group, momentum)
        self.optimizer.lr = base
        self.last_it, self.last_epoch, self.base_lr = int(it), int(epoch), base

    def get_group_lrs(self) -> dict[str, float]:
        """``{group name: current LR}`` (unnamed groups are ``group<i>``)."""
        return {str(g.get("name", f"group{i}")): float(g["lr"]) for i, g in enumerate(self.optimizer.param_groups)}

    def get_last_lr(self) -> list[float]:
        return [float(g["lr"]) for g in self.optimizer.param_groups]

    def state_dict(self) -> dict[str, Any]:
        return {"last_it": int(self.last_it), "last_epoch": int(self.last_epoch), "base_lr": float(self.base_lr),
                "schedule": {"type": type(self.schedule).__name__, **_plain(asdict(self.schedule))}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        saved = dict(state.get("schedule", {}))
        current = {"type": type(self.schedule).__name__, **_plain(asdict(self.schedule))}
        if saved and saved != current:
            _LOG.warning("resuming with a different LR schedule: checkpoint %s, config %s; the config's is used",
                         saved, current)
        self._apply(int(state["last_it"]), int(state["last_epoch"]))


def _plain(value: Any) -> Any:
    """Tuples to lists, recursively (checkpoint-friendly, comparable after a round trip)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def build_scheduler(optimizer: torch.optim.Optimizer, total_iters_each_epoch: int, total_epochs: int,
                    last_epoch: int, optim_cfg: Mapping) -> tuple[DifferentialLRScheduler, None]:
    """Same signature and return shape as OpenPCDet's ``build_scheduler``: ``(scheduler, None)``.

    ``adam_onecycle`` gets :class:`OneCycleSchedule`, the others :class:`StepDecaySchedule`
    (warm-up included, so no separate warm-up scheduler is returned).
    """
    if int(total_iters_each_epoch) < 1 or int(total_epochs) < 1:
        raise ConfigError(f"need at least one iteration and one epoch, got {total_iters_each_epoch} iterations "
                          f"x {total_epochs} epochs", key="OPTIMIZATION.NUM_EPOCHS", file=config_source(optim_cfg),
                          fix="check the dataset size, batch size and --epochs")
    if _optimizer_name(optim_cfg) == "adam_onecycle":
        schedule = OneCycleSchedule.from_cfg(optim_cfg, int(total_iters_each_epoch) * int(total_epochs))
    else:
        schedule = StepDecaySchedule.from_cfg(optim_cfg, int(total_iters_each_epoch))
    scheduler = DifferentialLRScheduler(optimizer, schedule, total_iters_each_epoch=total_iters_each_epoch,
                                        last_epoch=last_epoch)
    return scheduler, None

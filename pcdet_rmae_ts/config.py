"""YAML configuration loading with OpenPCDet's semantics, without importing OpenPCDet.

Implements ``_BASE_CONFIG_`` merging, ``--set KEY VALUE`` overrides, duplicate-key
warnings, experiment tags (``TAG``, ``EXP_GROUP_PATH``) and the plugin's loss weights.
"""
from __future__ import annotations

import ast
import dataclasses
import difflib
import logging
import os
import weakref
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence, Tuple

import yaml
from easydict import EasyDict

from .backbone_keys import VALID_KEYS

logger = logging.getLogger(__name__)

PACKAGE_ROOT = Path(__file__).resolve().parent
"""The package directory; it holds ``cfgs/`` (last place ``_BASE_CONFIG_`` is looked up)."""

ROOT_DIR = PACKAGE_ROOT.parent
"""Like OpenPCDet's ``cfg.ROOT_DIR``: the directory above the package (outputs go below it)."""

BASE_CONFIG_KEY = "_BASE_CONFIG_"

LOSS_WEIGHT_DEFAULTS = {"RMAE_WEIGHT": 1.0, "TEACHER_STUDENT_WEIGHT": 0.0, "DETECTION_WEIGHT": 1.0}

# id(mapping) -> (weak reference, file): lets later validators name the YAML file of a section.
_SOURCES: dict = {}


class ConfigError(ValueError):
    """A configuration problem; the message names the key path, the file and the fix."""

    def __init__(self, message: str, *, key: str | None = None, file: str | os.PathLike | None = None,
                 fix: str | None = None) -> None:
        self.key = key
        self.file = None if file is None else str(file)
        self.fix = fix
        parts = [f"config key '{key}': {message}" if key else message]
        parts.append(f"(file: {self.file})" if self.file else "(file: unknown)")
        if fix:
            parts.append(f"Fix: {fix}")
        super().__init__(" ".join(parts))


def nearest_key(key: str, valid: Iterable[str]) -> str | None:
    """The valid key closest to ``key`` (difflib), or None when nothing is close."""
    matches = difflib.get_close_matches(str(key), [str(v) for v in valid], n=1, cutoff=0.5)
    return matches[0] if matches else None


def check_known_keys(section: Mapping, valid: Iterable[str], *, key_path: str,
                     file: str | os.PathLike | None = None) -> None:
    """Raise ConfigError for the first key of ``section`` not in ``valid``, naming the nearest one."""
    valid = list(valid)
    for key in section:
        if key in valid:
            continue
        near = nearest_key(key, valid)
        hint = f"did you mean '{near}'?" if near else f"valid keys are {sorted(valid)}"
        raise ConfigError(f"unknown key '{key}'", key=f"{key_path}.{key}", file=file or config_source(section),
                          fix=f"{hint} Valid keys: {', '.join(sorted(valid))}.")


def yaml_key(field: dataclasses.Field) -> str:
    """The YAML key of a config dataclass field: ``metadata['key']``, else the field name in capitals."""
    return field.metadata.get("key", field.name.upper())


def section_keys(cls: type) -> Tuple[str, ...]:
    """The YAML keys a config dataclass reads (:func:`dataclass_from_section`), in field order."""
    return tuple(yaml_key(f) for f in dataclasses.fields(cls) if not f.metadata.get("derived"))


def _convert_like(default: Any) -> Callable[[Any], Any]:
    if isinstance(default, tuple):
        return tuple
    if default is None:
        return lambda value: value
    return type(default)


def dataclass_from_section(cls: type, section: Mapping | None, *, key_path: str, check_unknown: bool = True,
                           **given: Any) -> Any:
    """The config dataclass ``cls`` from one YAML ``section``; the dataclass is the only place the
    defaults are written.

    Field ``f`` reads the key :func:`yaml_key` (``f.metadata['key']`` or ``F``), converted by
    ``f.metadata['convert']`` or else by the type of its default; an absent key keeps the default.
    Fields marked ``metadata['derived']`` (computed from several keys) and the ones in ``given`` are
    not read. With ``check_unknown``, a key no field reads is a ConfigError naming the nearest one
    (turn it off for a section shared with other components, checked by its owner)."""
    section = section if section is not None else {}
    if check_unknown:
        check_known_keys(section, section_keys(cls), key_path=key_path)
    kwargs = dict(given)
    for field in dataclasses.fields(cls):
        key = yaml_key(field)
        if field.name in given or field.metadata.get("derived") or key not in section:
            continue
        convert = field.metadata.get("convert") or _convert_like(field.default)
        kwargs[field.name] = convert(section[key])
    return cls(**kwargs)


def config_source(section: Any) -> str | None:
    """The YAML file a mapping built by :func:`cfg_from_yaml_file` came from, if known."""
    entry = _SOURCES.get(id(section))
    if entry is None or entry[0]() is not section:
        return None
    return entry[1]


def _remember_source(section: Any, file: Path) -> None:
    try:
        _SOURCES[id(section)] = (weakref.ref(section), str(file))
    except TypeError:  # not weak-referenceable; the file is then reported as unknown
        pass


class DuplicateKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that records every duplicated mapping key as ``(key, first_line, line)``.

    PyYAML silently keeps the last value of a duplicated key; this loader keeps that behaviour
    (so configs load as they always did) and lets the caller say so (``load_yaml`` warns, the
    pre-flight check reports).
    """

    def __init__(self, stream) -> None:
        super().__init__(stream)
        self.duplicates: list = []

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        if isinstance(node, yaml.MappingNode):
            self.flatten_mapping(node)
            seen: dict = {}
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                line = key_node.start_mark.line + 1
                try:
                    first = seen.get(key)
                except TypeError:  # unhashable key: SafeConstructor reports it below
                    continue
                if first is not None:
                    self.duplicates.append((key, first, line))
                else:
                    seen[key] = line
        return super().construct_mapping(node, deep=deep)


def read_yaml_with_duplicates(path: str | os.PathLike) -> tuple:
    """``(data, duplicates)`` of one YAML file; ``duplicates`` as recorded by :class:`DuplicateKeyLoader`.
    Raises ConfigError for a missing file or invalid YAML."""
    path = Path(path)
    try:
        with open(path, "r", encoding="utf-8") as stream:
            loader = DuplicateKeyLoader(stream)
            try:
                data = loader.get_single_data()
            finally:
                loader.dispose()
    except FileNotFoundError as err:
        raise ConfigError(f"config file not found: {path}", file=path,
                          fix="pass an existing --cfg_file path (relative to the current directory)") from err
    except yaml.YAMLError as err:
        raise ConfigError(f"invalid YAML: {err}", file=path, fix="correct the YAML syntax") from err
    return data, loader.duplicates


def load_yaml(path: str | os.PathLike) -> dict:
    """Read one YAML file (no ``_BASE_CONFIG_`` handling) with duplicate-key warnings."""
    data, duplicates = read_yaml_with_duplicates(path)
    for key, first, line in duplicates:
        logger.warning("duplicate key '%s' in %s at line %d (first defined at line %d): PyYAML keeps "
                       "only the last one; merge the two blocks into one", key, path, line, first)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"top level must be a mapping, got {type(data).__name__}", file=path,
                          fix="write the config as KEY: value pairs")
    return data


def base_config_candidates(base: str | os.PathLike, including_file: str | os.PathLike) -> list:
    """Where ``_BASE_CONFIG_: base`` is looked for, in order.

    1. the current working directory (what OpenPCDet does);
    2. the including file's directory and each of its ancestors;
    3. the package root (``pcdet_rmae_ts/``, which holds ``cfgs/``).
    An absolute ``base`` is used as is.
    """
    base = Path(base)
    if base.is_absolute():
        return [base]
    including_dir = Path(including_file).resolve().parent
    candidates = [Path.cwd() / base]
    candidates += [directory / base for directory in (including_dir, *including_dir.parents)]
    candidates.append(PACKAGE_ROOT / base)
    unique: list = []
    for candidate in candidates:
        if candidate not in unique:
            unique.append(candidate)
    return unique


def resolve_base_config(base: str | os.PathLike, including_file: str | os.PathLike) -> Path:
    """First existing path among :func:`base_config_candidates`; ConfigError listing them otherwise."""
    candidates = base_config_candidates(base, including_file)
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    tried = "\n  ".join(str(c) for c in candidates)
    raise ConfigError(f"cannot find {BASE_CONFIG_KEY} '{base}'; tried:\n  {tried}\n", key=BASE_CONFIG_KEY,
                      file=including_file, fix="correct the path, or run from a directory where it resolves")


def merge_new_config(config: EasyDict, new_config: Mapping, *, cfg_file: str | os.PathLike) -> EasyDict:
    """Merge ``new_config`` into ``config`` in place, as OpenPCDet's ``merge_new_config`` does.

    A ``_BASE_CONFIG_`` at any level is loaded first and shallow-updated into that level
    (its own ``_BASE_CONFIG_`` is not followed, as in OpenPCDet). Then each key of
    ``new_config`` is applied: mappings merge recursively, everything else (lists too)
    replaces. The ``_BASE_CONFIG_`` string itself stays in the config, as in OpenPCDet.
    """
    if BASE_CONFIG_KEY in new_config:
        base_path = resolve_base_config(new_config[BASE_CONFIG_KEY], cfg_file)
        logger.debug("%s of %s resolved to %s", BASE_CONFIG_KEY, cfg_file, base_path)
        config.update(EasyDict(load_yaml(base_path)))
    for key, value in new_config.items():
        if not isinstance(value, dict):
            config[key] = value
            continue
        if not isinstance(config.get(key), dict):
            config[key] = EasyDict()
        merge_new_config(config[key], value, cfg_file=cfg_file)
    return config


def exp_group_path(cfg_file: str | os.PathLike) -> str:
    """Output sub-directory of a config: the folders between ``cfgs/`` and the file.

    ``cfgs/custom_models/x.yaml`` and ``/abs/pcdet_rmae_ts/cfgs/custom_models/x.yaml``
    both give ``custom_models``. Without a ``cfgs`` folder in the path, OpenPCDet's rule
    applies (the path minus its first component and the file name).
    """
    parts = Path(cfg_file).as_posix().split("/")[:-1]
    if "cfgs" in parts:
        last = len(parts) - 1 - parts[::-1].index("cfgs")
        return "/".join(parts[last + 1:])
    return "/".join(p for p in parts[1:] if p)


def cfg_from_yaml_file(cfg_file: str | os.PathLike, cfg: EasyDict | None = None) -> EasyDict:
    """Load ``cfg_file`` into ``cfg`` (a fresh EasyDict when None) and return it.

    Adds ``ROOT_DIR`` and ``LOCAL_RANK`` when absent (OpenPCDet's global cfg has them)
    and sets ``TAG`` (the file stem) and ``EXP_GROUP_PATH`` (:func:`exp_group_path`),
    which OpenPCDet's ``train.py`` sets after loading.
    """
    cfg_file = Path(cfg_file)
    cfg = EasyDict() if cfg is None else cfg
    cfg.setdefault("ROOT_DIR", ROOT_DIR)
    cfg.setdefault("LOCAL_RANK", 0)
    merge_new_config(cfg, load_yaml(cfg_file), cfg_file=cfg_file)
    cfg.TAG = cfg_file.stem
    cfg.EXP_GROUP_PATH = exp_group_path(cfg_file)
    _remember_source(cfg, cfg_file)
    for value in cfg.values():
        if isinstance(value, dict):
            _remember_source(value, cfg_file)
    return cfg


def _parse_value(text: Any) -> Any:
    """A ``--set`` value: Python literal, else YAML scalar/list/map, else the raw string."""
    if not isinstance(text, str):
        return text
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            value = text
    return list(value) if isinstance(value, tuple) else value


def _cast_like(old: Any, value: Any, *, key: str) -> Any:
    """Check ``value`` against the type of the existing ``old`` value (int is accepted for float)."""
    if old is None or value is None:
        return value
    if isinstance(old, str):
        return value if isinstance(value, str) else str(value)
    if isinstance(old, float) and type(value) is int:
        return float(value)
    same_kind = (isinstance(old, dict) and isinstance(value, dict)) or (
        isinstance(old, list) and isinstance(value, list))
    if same_kind or type(value) is type(old):
        return value
    raise ConfigError(f"type mismatch: the config has {type(old).__name__} ({old!r}), --set gave "
                      f"{type(value).__name__} ({value!r})", key=key,
                      fix=f"pass a {type(old).__name__} value (e.g. 1.0 for a float, [a,b] for a list)")


def _set_value(parent: dict, leaf: str, raw: Any, *, key: str) -> None:
    old = parent[leaf]
    if isinstance(old, str):
        parent[leaf] = raw if isinstance(raw, str) else str(raw)  # strings (paths) are taken verbatim
        return
    value = _parse_value(raw)
    if isinstance(old, dict) and isinstance(value, str):
        pairs = [item.split(":", 1) for item in value.split(",") if item]
        for sub_key, sub_raw in pairs:
            if sub_key not in old:
                _missing(sub_key, old, key=f"{key}.{sub_key}")
            _set_value(old, sub_key, sub_raw, key=f"{key}.{sub_key}")
        return
    if isinstance(old, dict) and isinstance(value, dict):
        for sub_key, sub_value in value.items():
            if sub_key not in old:
                _missing(sub_key, old, key=f"{key}.{sub_key}")
            _set_value(old, sub_key, sub_value, key=f"{key}.{sub_key}")
        return
    if isinstance(old, list) and not isinstance(value, list):
        texts = [item.strip() for item in str(raw).split(",") if item.strip() != ""]
        keep_text = bool(old) and isinstance(old[0], str)
        items = texts if keep_text else [_parse_value(item) for item in texts]
        value = [_cast_like(old[0], item, key=key) for item in items] if old else items
    parent[leaf] = _cast_like(old, value, key=key)


# Documented optional plugin keys that --set may add when the config leaves them out, with their
# defaults (the type template for the value; None: any YAML value, checked by the component).
SETTABLE_OPTIONAL_KEYS = {
    "DATA_CONFIG.VOXELIZE_ON_DEVICE": False,
    "DATA_CONFIG.ON_BAD_SAMPLE": "error",
    "DATA_CONFIG.MAX_BAD_SAMPLE_RETRIES": 20,
    "DATA_CONFIG.SYNTHETIC": None,
    "DATA_CONFIG.SYNTHETIC.FRAMES": 20,
    "DATA_CONFIG.SYNTHETIC.SEED": 0,
    "DATA_CONFIG.SYNTHETIC.PROFILE": "demo",
    "OPTIMIZATION.DIFFERENTIAL_LR": None,
    "OPTIMIZATION.BACKBONE_LR_RATIO": 0.1,
    "OPTIMIZATION.DENSE_HEAD_LR_RATIO": 2.0,
    "OPTIMIZATION.VIS_INTERVAL": 0,
}


def settable_optional_keys() -> dict:
    """:data:`SETTABLE_OPTIONAL_KEYS` plus every key of the plugin backbone (``MODEL.BACKBONE_3D.*``)."""
    keys = {f"MODEL.BACKBONE_3D.{key}": None for key in VALID_KEYS}
    keys.update(SETTABLE_OPTIONAL_KEYS)
    return keys


def _add_documented(node: dict, parts: Sequence[str], depth: int, optional: Mapping) -> bool:
    """Create ``parts[depth]`` in ``node`` when ``parts[:depth + 1]`` is a documented optional key."""
    path = ".".join(parts[:depth + 1])
    if path not in optional:
        return False
    default = optional[path]
    node[parts[depth]] = EasyDict() if depth < len(parts) - 1 else default
    return True


def _missing(part: str, node: Mapping, *, key: str) -> None:
    parent = key.rsplit(".", 1)[0] + "." if "." in key else ""
    siblings = [k[len(parent):] for k in settable_optional_keys()
                if k.startswith(parent) and "." not in k[len(parent):]]
    near = nearest_key(part, list(node.keys()) + siblings)
    fix = (f"did you mean '{near}'?" if near else
           "--set can only change keys that the config already has, or the plugin's documented optional keys "
           "(see README: 'Data keys of the plugin')")
    raise ConfigError(f"'{part}' does not exist, --set cannot add keys", key=key, fix=fix)


def cfg_from_list(set_list: Sequence[Any], cfg: EasyDict) -> EasyDict:
    """Apply ``--set KEY VALUE [KEY VALUE ...]`` overrides to ``cfg`` in place (OpenPCDet semantics).

    Keys are dotted paths that must already exist, or be documented optional plugin keys
    (:func:`settable_optional_keys`), which are added with their default as the type template. Values are parsed with
    ``ast.literal_eval`` then YAML (strings stay strings where the config holds a string);
    a dict target accepts ``k1:v1,k2:v2``, a list target accepts ``a,b`` or ``[a,b]``.
    Types must match the existing value (an int is accepted for a float).
    """
    if len(set_list) % 2 != 0:
        raise ConfigError(f"--set needs KEY VALUE pairs, got {len(set_list)} items: {list(set_list)}",
                          key=str(set_list[-1]), fix="give a value for every key (--set A.B 1 C.D 2)")
    optional = settable_optional_keys()
    for key, raw in zip(set_list[0::2], set_list[1::2]):
        node = cfg
        parts = str(key).split(".")
        for depth, part in enumerate(parts[:-1]):
            if isinstance(node, dict) and node.get(part) is None:
                # absent, or None in the YAML (SYNTHETIC: None, then --set DATA_CONFIG.SYNTHETIC.FRAMES 10)
                _add_documented(node, parts, depth, optional)
            if not isinstance(node, dict) or part not in node:
                _missing(part, node if isinstance(node, dict) else {}, key=".".join(parts[:depth + 1]))
            node = node[part]
        last = len(parts) - 1
        if not isinstance(node, dict) or (parts[-1] not in node and not _add_documented(node, parts, last, optional)):
            _missing(parts[-1], node if isinstance(node, dict) else {}, key=str(key))
        _set_value(node, parts[-1], raw, key=str(key))
    return cfg


def log_config_to_file(cfg: Mapping, logger: logging.Logger | None = None, pre: str = "cfg") -> None:
    """Log every leaf of ``cfg`` as ``cfg.A.B: value`` (what OpenPCDet's function writes)."""
    log = logger or globals()["logger"]
    for key, value in cfg.items():
        if isinstance(value, dict):
            log.info("----------- %s -----------", key)
            log_config_to_file(value, logger=log, pre=f"{pre}.{key}")
        else:
            log.info("%s.%s: %s", pre, key, value)


def resolve_loss_config(cfg: Mapping) -> dict:
    """The plugin's loss weights, merged from three places.

    Sources, from least to most specific: top-level ``LOSS_CONFIG``,
    ``MODEL.LOSS_CONFIG``, ``MODEL.BACKBONE_3D.LOSS_CONFIG``. The most specific source wins,
    **key by key** (a weight set only at the top level survives a BACKBONE_3D section that
    sets other weights). Defaults: ``RMAE_WEIGHT`` 1.0, ``TEACHER_STUDENT_WEIGHT`` 0.0,
    ``DETECTION_WEIGHT`` 1.0; other keys found there are passed through. A warning is
    logged when one key has different values in several places. The head's own
    ``MODEL.DENSE_HEAD.LOSS_CONFIG`` is not read.

    Returns a plain dict; the three known weights are floats >= 0.
    """
    model = cfg.get("MODEL") or {}
    sources = [
        ("LOSS_CONFIG", cfg.get("LOSS_CONFIG")),
        ("MODEL.LOSS_CONFIG", model.get("LOSS_CONFIG")),
        ("MODEL.BACKBONE_3D.LOSS_CONFIG", (model.get("BACKBONE_3D") or {}).get("LOSS_CONFIG")),
    ]
    resolved = dict(LOSS_WEIGHT_DEFAULTS)
    origin: dict = {}
    for where, section in sources:
        if section is None:
            continue
        if not isinstance(section, dict):
            raise ConfigError(f"must be a mapping of loss weights, got {section!r}", key=where,
                              file=config_source(cfg), fix="write it as RMAE_WEIGHT: 1.0 etc.")
        for key, value in section.items():
            if key in origin and resolved[key] != value:
                logger.warning("loss weight %s is %r in %s and %r in %s; using %r (most specific wins)",
                               key, resolved[key], origin[key], value, where, value)
            resolved[key] = value
            origin[key] = where
    for key in LOSS_WEIGHT_DEFAULTS:
        value = resolved[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise ConfigError(f"must be a number >= 0, got {value!r}", key=f"{origin.get(key, 'LOSS_CONFIG')}.{key}",
                              file=config_source(cfg), fix=f"set {key} to a non-negative number")
        resolved[key] = float(value)
    return resolved

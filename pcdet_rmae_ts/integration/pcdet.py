"""The thin OpenPCDet integration: registries, the differential-LR hook for the stock
``tools/train.py``, and the launcher that runs OpenPCDet's own train.py / test.py.

Nothing here imports pcdet at module import time; each function imports what it needs.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import logging
import os
import re
import runpy
import sys
import types
import weakref
from pathlib import Path
from typing import Any, Dict, List, Mapping, MutableMapping, Optional, Sequence, Tuple

from ..config import BASE_CONFIG_KEY, load_yaml, resolve_base_config

MIN_PCDET_VERSION = (0, 6, 0)
HOOK_MARK = "__rmae_differential_lr__"
PCDET_LOGGER = "pcdet.utils.common_utils"  # the logger OpenPCDet's create_logger configures
GROUP_LR_LOG_INTERVAL = 50


class PcdetNotAvailable(ImportError):
    """OpenPCDet is missing, broken or too old; the message says what to do."""


class LauncherError(RuntimeError):
    """The launcher cannot start OpenPCDet's tool; the message says what to do."""


# ----------------------------------------------------------------------------- registration
def _parse_version(text: str) -> Tuple[int, ...]:
    match = re.match(r"(\d+)\.(\d+)\.(\d+)", str(text))
    return tuple(int(x) for x in match.groups()) if match else (0, 0, 0)


def _import_registries() -> Tuple[types.ModuleType, types.ModuleType]:
    try:
        import pcdet
    except ImportError as err:
        raise PcdetNotAvailable(
            "OpenPCDet (the 'pcdet' package) is not importable. Build and install it from source "
            "(https://github.com/open-mmlab/OpenPCDet, docs/INSTALL.md: `python setup.py develop`) in this "
            f"Python environment ({sys.executable}), then call register() again.") from err
    version = getattr(pcdet, "__version__", "0.0.0")
    if _parse_version(version) < MIN_PCDET_VERSION:
        raise PcdetNotAvailable(f"OpenPCDet {version} is too old: pcdet_rmae_ts needs >= "
                                f"{'.'.join(map(str, MIN_PCDET_VERSION))} (VoxelNeXt). Update your checkout.")
    try:
        b3d = importlib.import_module("pcdet.models.backbones_3d")
        detectors = importlib.import_module("pcdet.models.detectors")
    except Exception as err:  # noqa: BLE001 - compiled ops / optional deps: say which
        raise PcdetNotAvailable(
            f"OpenPCDet {version} is installed but 'pcdet.models' failed to import ({type(err).__name__}: {err}). "
            "Usually a compiled extension was not built (`python setup.py develop` in the OpenPCDet checkout) or "
            "an import-time dependency is missing (kornia==0.6.12, av2, pandas, opencv, SharedArray).") from err
    if "VoxelNeXt" not in getattr(detectors, "__all__", {}):
        raise PcdetNotAvailable(f"OpenPCDet {version} has no VoxelNeXt detector; it is too old for pcdet_rmae_ts.")
    return b3d, detectors


def _put(module: types.ModuleType, name: str, cls: type) -> None:
    module.__all__[name] = cls
    setattr(module, name, cls)  # `from module import *` iterates __all__'s keys


def register() -> Dict[str, List[str]]:
    """Add RMAECMAEBackbonePhase1 to ``backbones_3d.__all__`` and RMAECMAEDetectorPhase1 to
    ``detectors.__all__`` (idempotent). Returns ``{registry: [names]}``."""
    b3d, detectors = _import_registries()
    from ..models.backbone import RMAECMAEBackbonePhase1
    from ..models.detector import get_detector_class

    _put(b3d, "RMAECMAEBackbonePhase1", RMAECMAEBackbonePhase1)
    _put(detectors, "RMAECMAEDetectorPhase1", get_detector_class())
    return {"backbones_3d": ["RMAECMAEBackbonePhase1"], "detectors": ["RMAECMAEDetectorPhase1"]}


# ----------------------------------------------------------------------------- optimizer hook
class _HookState:
    """What the wrappers share: the model the optimizer was built for and the latest group LRs."""

    def __init__(self) -> None:
        self.model_ref: Optional[weakref.ReferenceType] = None
        self.group_lrs: Dict[str, float] = {}


HOOK_STATE = _HookState()


class GroupLRScheduler:
    """Wraps the differential-LR scheduler for OpenPCDet's loop: same ``step(it, epoch=None)``, and
    every ``interval`` iterations (and the first) it logs each group's LR to OpenPCDet's logger;
    the latest LRs are kept in :data:`HOOK_STATE` for tensorboard (``train/lr_<group>``)."""

    def __init__(self, scheduler: Any, logger: logging.Logger, interval: int = GROUP_LR_LOG_INTERVAL,
                 iters_per_epoch: int = 0) -> None:
        self.scheduler = scheduler
        self.logger = logger
        self.interval = max(int(interval), 1)
        self.iters_per_epoch = max(int(iters_per_epoch), 0)
        self._logged_first = False

    def step(self, it: Optional[int] = None, epoch: Optional[int] = None) -> None:
        self.scheduler.step(it, epoch)
        lrs = self.scheduler.get_group_lrs()
        HOOK_STATE.group_lrs = dict(lrs)
        current = self.scheduler.last_it
        text = ", ".join(f"{name} {lr:.4e}" for name, lr in lrs.items())
        # OpenPCDet steps the scheduler before each iteration: `current + 1` iterations are done after it.
        if self.iters_per_epoch and (current + 1) % self.iters_per_epoch == 0:
            self.logger.info("epoch %d end (iter %d): LR per group: %s",
                             (current + 1) // self.iters_per_epoch, current, text)
        elif not self._logged_first or current % self.interval == 0:
            self.logger.info("iter %d: LR per group: %s", current, text)
        self._logged_first = True

    def __getattr__(self, name: str) -> Any:  # state_dict, get_group_lrs, optimizer, ...
        return getattr(self.scheduler, name)


def install_optimizer_hook(module: Optional[types.ModuleType] = None,
                           merged_epochs: bool = False) -> types.ModuleType:
    """Replace ``build_optimizer`` / ``build_scheduler`` of ``train_utils.optimization`` (OpenPCDet's
    tools/) with wrappers that use pcdet_rmae_ts.optim when ``OPTIMIZATION.DIFFERENTIAL_LR`` is on and
    delegate to the originals otherwise. Idempotent; returns the module.

    ``merged_epochs``: train.py runs with ``--merge_all_iters_to_one_epoch``. Its loader then holds every
    epoch's batches, but train.py still passes that length to the scheduler as one epoch's, so the LR
    schedule would span ``epochs`` times the run. The scheduler gets ``length // epochs`` steps per epoch,
    as OpenPCDet's own training loop counts them.

    Must run before OpenPCDet's train.py body executes (it binds the names at import).
    """
    from ..optim.differential_lr import build_scheduler as dlr_build_scheduler
    from ..optim.differential_lr import create_optimizer_with_differential_lr, uses_differential_lr

    if module is None:
        module = importlib.import_module("train_utils.optimization")
    if getattr(module.build_optimizer, HOOK_MARK, False):
        return module
    original_optimizer, original_scheduler = module.build_optimizer, module.build_scheduler

    def build_optimizer(model, optim_cfg):
        HOOK_STATE.model_ref = weakref.ref(model)
        if uses_differential_lr(optim_cfg):
            return create_optimizer_with_differential_lr(model, optim_cfg, logger=logging.getLogger(PCDET_LOGGER))
        return original_optimizer(model, optim_cfg)

    def build_scheduler(optimizer, total_iters_each_epoch, total_epochs, last_epoch, optim_cfg):
        if merged_epochs and total_epochs > 1:
            merged, total_iters_each_epoch = total_iters_each_epoch, total_iters_each_epoch // total_epochs
            logging.getLogger(PCDET_LOGGER).info(
                "--merge_all_iters_to_one_epoch: the LR schedule gets %d steps per epoch (%d loader steps over "
                "%d epochs), not the %d that train.py passes", total_iters_each_epoch, merged, total_epochs, merged)
        model = HOOK_STATE.model_ref() if HOOK_STATE.model_ref is not None else None
        if model is not None and hasattr(model, "set_total_steps"):
            model.set_total_steps(int(total_iters_each_epoch) * int(total_epochs))
        if uses_differential_lr(optim_cfg):
            scheduler, warmup = dlr_build_scheduler(optimizer, total_iters_each_epoch, total_epochs, last_epoch,
                                                    optim_cfg)
            interval = int(optim_cfg.get("GROUP_LR_LOG_INTERVAL", GROUP_LR_LOG_INTERVAL))
            return GroupLRScheduler(scheduler, logging.getLogger(PCDET_LOGGER), interval,
                                    iters_per_epoch=total_iters_each_epoch), warmup
        return original_scheduler(optimizer=optimizer, total_iters_each_epoch=total_iters_each_epoch,
                                  total_epochs=total_epochs, last_epoch=last_epoch, optim_cfg=optim_cfg)

    for wrapper in (build_optimizer, build_scheduler):
        setattr(wrapper, HOOK_MARK, True)
    build_optimizer.original = original_optimizer
    build_scheduler.original = original_scheduler
    build_scheduler.merged_epochs = merged_epochs
    module.build_optimizer, module.build_scheduler = build_optimizer, build_scheduler
    return module


def install_group_lr_tensorboard(models_module: Optional[types.ModuleType] = None) -> types.ModuleType:
    """Wrap ``pcdet.models.model_fn_decorator`` so that the training step's tb_dict carries
    ``lr_<group>`` for every differential-LR group (the stock loop writes them as ``train/lr_<group>``)."""
    if models_module is None:
        models_module = importlib.import_module("pcdet.models")
    original = models_module.model_fn_decorator
    if getattr(original, HOOK_MARK, False):
        return models_module

    def model_fn_decorator():
        model_func = original()

        def wrapped(model, batch_dict):
            ret = model_func(model, batch_dict)
            for name, lr in HOOK_STATE.group_lrs.items():
                ret.tb_dict[f"lr_{name}"] = lr
            return ret

        return wrapped

    setattr(model_fn_decorator, HOOK_MARK, True)
    models_module.model_fn_decorator = model_fn_decorator
    return models_module


# ----------------------------------------------------------------------------- evaluation
CUSTOM_RESULT_FILE = "result_custom.json"


def custom_dataset_evaluation(dataset: Any, det_annos: Sequence[Mapping], class_names: Sequence[str],
                              **kwargs: Any) -> Tuple[str, Dict[str, float]]:
    """``CustomDataset.evaluation`` with the plugin's evaluator: per-class 3-D / BEV AP (R40) for the
    dataset's own class names at ``DATA_CONFIG.EVALUATION`` thresholds, per range bin; no KITTI name
    mapping, no 2-D boxes, no numba. Returns OpenPCDet's ``(result_str, result_dict)``; the full
    result is also written as ``result_custom.json`` into ``output_path`` when OpenPCDet passes one."""
    from ..evaluation import evaluate_detections, flatten_results, format_results, write_results_json

    infos = getattr(dataset, "custom_infos", None) or []
    if not infos or "annos" not in infos[0]:
        return "No ground-truth boxes for evaluation", {}
    gt_annos = [dict(info["annos"], frame_id=info["point_cloud"]["lidar_idx"]) for info in infos]
    result = evaluate_detections(gt_annos, list(det_annos), list(class_names),
                                 config=dataset.dataset_cfg.get("EVALUATION"))
    if kwargs.get("output_path") is not None:
        write_results_json(result, Path(kwargs["output_path"]) / CUSTOM_RESULT_FILE)
    return "\n" + format_results(result), flatten_results(result)


def install_custom_evaluation(dataset_module: Optional[types.ModuleType] = None) -> type:
    """Make OpenPCDet's ``CustomDataset.evaluation`` (what test.py and train.py's end-of-training
    evaluation call) use :func:`custom_dataset_evaluation`. KITTI, Waymo, nuScenes... keep their own.
    Idempotent; returns the class."""
    if dataset_module is None:
        dataset_module = importlib.import_module("pcdet.datasets.custom.custom_dataset")
    cls = dataset_module.CustomDataset
    if getattr(cls.evaluation, HOOK_MARK, False):
        return cls

    def evaluation(self, det_annos, class_names, **kwargs):
        return custom_dataset_evaluation(self, det_annos, class_names, **kwargs)

    setattr(evaluation, HOOK_MARK, True)
    evaluation.original = cls.evaluation
    cls.evaluation = evaluation
    return cls


# ----------------------------------------------------------------------------- VoxelNeXt targets
STOCK_TARGETS_ENV = "PCDET_RMAE_TS_STOCK_TARGETS"


def install_batched_voxelnext_targets(head_module: Optional[types.ModuleType] = None,
                                      environ: Optional[Mapping[str, str]] = None) -> Optional[type]:
    """Make ``VoxelNeXtHead.assign_target_of_single_head`` compute its targets for all boxes at once
    (:func:`pcdet_rmae_ts.voxel_targets.assign_single_head`): the same targets, without the per-box
    Python loop and its host syncs that dominate a fine-tuning step on crowded scenes. Set
    ``PCDET_RMAE_TS_STOCK_TARGETS=1`` to keep OpenPCDet's loop. Idempotent; returns the class (None when
    switched off or when this OpenPCDet has no VoxelNeXtHead). The stock method stays reachable as
    ``.original``."""
    if (os.environ if environ is None else environ).get(STOCK_TARGETS_ENV, "") == "1":
        return None
    if head_module is None:
        try:
            head_module = importlib.import_module("pcdet.models.dense_heads.voxelnext_head")
        except ModuleNotFoundError as err:
            if (err.name or "").startswith("pcdet.models.dense_heads"):
                return None  # an OpenPCDet without VoxelNeXt's head: nothing to batch
            raise
    cls = head_module.VoxelNeXtHead
    if getattr(cls.assign_target_of_single_head, HOOK_MARK, False):
        return cls
    import torch

    from ..voxel_targets import assign_single_head

    gaussian_radius = head_module.centernet_utils.gaussian_radius
    announced = []

    def assign_target_of_single_head(self, num_classes, gt_boxes, num_voxels, spatial_indices, spatial_shape,
                                     feature_map_stride, num_max_objs=500, gaussian_overlap=0.1, min_radius=2):
        if not announced:
            announced.append(True)
            logging.getLogger(PCDET_LOGGER).info(
                "VoxelNeXtHead targets: batched over boxes by pcdet_rmae_ts (the same targets; %s=1 for "
                "the stock per-box loop)", STOCK_TARGETS_ENV)
        dx = gt_boxes[:, 3] / self.voxel_size[0] / feature_map_stride
        dy = gt_boxes[:, 4] / self.voxel_size[1] / feature_map_stride
        radius = torch.clamp_min(gaussian_radius(dx, dy, min_overlap=gaussian_overlap).int(), min=min_radius)
        return assign_single_head(gt_boxes, radius, num_classes, num_voxels, spatial_indices, spatial_shape,
                                  self.point_cloud_range, self.voxel_size, feature_map_stride,
                                  num_max_objs=num_max_objs, gaussian_type=self.gaussian_type,
                                  gaussian_ratio=self.gaussian_ratio)

    setattr(assign_target_of_single_head, HOOK_MARK, True)
    assign_target_of_single_head.original = cls.assign_target_of_single_head
    cls.assign_target_of_single_head = assign_target_of_single_head
    return cls


# ----------------------------------------------------------------------------- checkpoints
def allow_numpy_scalars_in_checkpoints() -> List[str]:
    """Let ``torch.load``'s default ``weights_only=True`` (torch >= 2.6) read NumPy scalars; the names allowed.

    OpenPCDet's one-cycle schedule writes ``numpy.float64`` learning rates and momenta into the optimizer
    state, so every checkpoint of a stock ``adam_onecycle`` run holds NumPy scalars, and OpenPCDet's own
    ``load_params_from_file`` (train.py's final evaluation, test.py) refuses the file. Only NumPy's scalar
    reconstruction and numeric dtypes are allowed: any other pickled object is still refused.
    """
    import numpy as np
    import torch

    add_safe_globals = getattr(torch.serialization, "add_safe_globals", None)
    if add_safe_globals is None:  # torch < 2.4: weights_only is not the default there either
        return []
    core = getattr(np, "_core", None) or np.core  # numpy 2 / numpy 1
    numeric = (np.float64, np.float32, np.float16, np.int64, np.int32, np.bool_)
    allowed = [core.multiarray.scalar, np.dtype, *{type(np.dtype(t)) for t in numeric}]
    add_safe_globals(allowed)
    names = sorted(f"{obj.__module__}.{obj.__name__}" for obj in allowed)
    if core.__name__ == "numpy._core":  # files written under numpy 1 name the scalar numpy.core.multiarray.scalar
        try:
            add_safe_globals([(core.multiarray.scalar, "numpy.core.multiarray.scalar")])
            names.append("numpy.core.multiarray.scalar")
        except TypeError:  # torch < 2.5 takes no (object, name) pairs
            pass
    return names


# ----------------------------------------------------------------------------- data loader workers
START_METHOD_ENV = "PCDET_RMAE_TS_START_METHOD"


def choose_worker_start_method(environ: Optional[Mapping[str, str]] = None) -> Optional[str]:
    """Set the multiprocessing start method before OpenPCDet's ``init_dist_pytorch`` does.

    OpenPCDet sets ``spawn`` when none is set, so every DataLoader worker of every epoch starts a fresh
    interpreter that re-imports pcdet (slow epoch starts: benchmarks/README.md). ``fork``
    (Linux's default, what OpenPCDet's single-process path uses) inherits the imported modules; the
    workers only read and augment point clouds, never touch CUDA. ``$PCDET_RMAE_TS_START_METHOD``
    (``fork``, ``spawn``, ``forkserver``) overrides. Returns the method set, or None if one was set already.
    """
    import torch.multiprocessing as mp

    environ = os.environ if environ is None else environ
    method = environ.get(START_METHOD_ENV) or ("fork" if sys.platform.startswith("linux") else None)
    if method is None or mp.get_start_method(allow_none=True) is not None:
        return None
    if method not in mp.get_all_start_methods():
        raise LauncherError(f"{START_METHOD_ENV}={method} is not a start method of this platform; use one of "
                            f"{', '.join(mp.get_all_start_methods())}.")
    mp.set_start_method(method)
    return method


# ----------------------------------------------------------------------------- config loading
def _absolutize_bases(node: Any, including_file: Path) -> None:
    if isinstance(node, MutableMapping):
        for key, value in node.items():
            if key == BASE_CONFIG_KEY and isinstance(value, str):
                node[key] = str(resolve_base_config(value, including_file))
            else:
                _absolutize_bases(value, including_file)


def install_config_lookup(config_module: Optional[types.ModuleType] = None) -> types.ModuleType:
    """Make ``pcdet.config.cfg_from_yaml_file`` find ``_BASE_CONFIG_`` as the plugin does: the
    current directory first (OpenPCDet's rule), then the including file's folder and its parents,
    then the pcdet_rmae_ts package. Files are read with the plugin's ``load_yaml`` (duplicate keys are
    reported); merging is OpenPCDet's own ``merge_new_config``."""
    if config_module is None:
        config_module = importlib.import_module("pcdet.config")
    if getattr(config_module.cfg_from_yaml_file, HOOK_MARK, False):
        return config_module

    def cfg_from_yaml_file(cfg_file, config):
        new_config = load_yaml(cfg_file)
        _absolutize_bases(new_config, Path(cfg_file))
        config_module.merge_new_config(config=config, new_config=new_config)
        return config

    setattr(cfg_from_yaml_file, HOOK_MARK, True)
    config_module.cfg_from_yaml_file = cfg_from_yaml_file
    return config_module


# ----------------------------------------------------------------------------- launcher
def _check_tools_dir(path: Path, source: str) -> Path:
    path = Path(path).expanduser().resolve()
    if not path.is_dir():
        raise LauncherError(f"{source} points to {path}, which is not a directory. It must be OpenPCDet's tools/ "
                            f"folder (the one with train.py, test.py and train_utils/).")
    for needed in ("train.py", "test.py", "train_utils/optimization/__init__.py"):
        if not (path / needed).exists():
            raise LauncherError(f"{source} points to {path}, which is not OpenPCDet's tools/ folder: {needed} is "
                                f"missing. Pass the tools/ folder of your OpenPCDet (or VoxelNeXt) checkout.")
    return path


def find_pcdet_tools(cli_dir: Optional[str] = None, environ: Optional[Mapping[str, str]] = None) -> Path:
    """OpenPCDet's tools/ folder: ``--pcdet_tools DIR``, else ``$PCDET_TOOLS``, else ``tools/`` next to
    an editable (source) install of pcdet. Raises :class:`LauncherError` saying what to do."""
    environ = os.environ if environ is None else environ
    if cli_dir:
        return _check_tools_dir(Path(cli_dir), "--pcdet_tools")
    if environ.get("PCDET_TOOLS"):
        return _check_tools_dir(Path(environ["PCDET_TOOLS"]), "the PCDET_TOOLS environment variable")
    spec = importlib.util.find_spec("pcdet")
    if spec is None or not spec.origin:
        raise LauncherError("cannot find OpenPCDet's tools/ folder: pcdet is not installed in this Python "
                            f"({sys.executable}). Pass --pcdet_tools /path/to/OpenPCDet/tools, or set "
                            "PCDET_TOOLS=/path/to/OpenPCDet/tools, or install OpenPCDet from its checkout with "
                            "`python setup.py develop`.")
    candidate = Path(spec.origin).resolve().parent.parent / "tools"
    if not (candidate / "train.py").is_file():
        raise LauncherError(f"pcdet is installed at {Path(spec.origin).parent}, but there is no tools/train.py next "
                            f"to it (not an editable/source install). Pass --pcdet_tools /path/to/OpenPCDet/tools "
                            f"or set PCDET_TOOLS.")
    return _check_tools_dir(candidate, f"the tools/ folder next to pcdet ({candidate})")


def split_launcher_args(argv: Sequence[str]) -> Tuple[argparse.Namespace, List[str]]:
    """Take the launcher's own flags out of ``argv`` (only before ``--set``, which swallows the rest)."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--pcdet_tools", default=None)
    parser.add_argument("--skip_preflight", action="store_true")
    parser.add_argument("--chdir_tools", action="store_true")
    parser.add_argument("--seed", type=int, default=None)
    argv = list(argv)
    cut = argv.index("--set") if "--set" in argv else len(argv)
    ours, rest = parser.parse_known_args(argv[:cut])
    return ours, rest + argv[cut:]


def translate_local_rank(argv: Sequence[str], environ: Optional[Mapping[str, str]] = None) -> List[str]:
    """Make the local rank reach train.py/test.py in both trees.

    ``--local-rank=N`` (torch.distributed.launch on torch >= 2.0) becomes ``--local_rank N``; under
    ``--launcher pytorch`` with ``LOCAL_RANK`` set (torchrun) and no explicit flag, ``--local_rank
    $LOCAL_RANK`` is added, because the VoxelNeXt fork's train.py ignores the variable (every rank
    would pick GPU 0). The flag goes before ``--set`` (which swallows what follows).
    """
    environ = os.environ if environ is None else environ
    out: List[str] = []
    for arg in argv:
        if arg.startswith("--local-rank="):
            out += ["--local_rank", arg.split("=", 1)[1]]
        elif arg == "--local-rank":
            out.append("--local_rank")
        else:
            out.append(arg)
    head = _tool_flags(out)
    tail = out[len(head):]
    launcher = _arg_value(head, "--launcher")
    has_flag = any(a == "--local_rank" or a.startswith("--local_rank=") for a in head)
    if launcher == "pytorch" and not has_flag and environ.get("LOCAL_RANK") is not None:
        head += ["--local_rank", str(environ["LOCAL_RANK"])]
    return head + tail


def _tool_flags(argv: Sequence[str]) -> List[str]:
    """The tool's own arguments: what comes before ``--set`` (whose remainder is config values)."""
    return list(argv[:argv.index("--set")]) if "--set" in argv else list(argv)


def _arg_value(argv: Sequence[str], flag: str) -> Optional[str]:
    for i, arg in enumerate(argv):
        if arg == "--set":
            return None
        if arg == flag and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return None


def _is_rank_zero(environ: Mapping[str, str]) -> bool:
    return environ.get("RANK", environ.get("LOCAL_RANK", "0")) == "0"


def run_preflight(cfg_file: Optional[str], environ: Mapping[str, str]) -> None:
    """Run the config pre-flight check; LauncherError on an error finding."""
    if not cfg_file:
        return
    from .preflight import check_config, failed, format_findings

    findings = check_config(cfg_file)
    if findings and _is_rank_zero(environ):
        sys.stderr.write(format_findings(cfg_file, findings) + "\n")  # CLI output of the launchers
    if failed(findings):
        raise LauncherError(f"the config pre-flight check found errors in {cfg_file} (listed above); fix them, or "
                            "pass --skip_preflight to run anyway.")


def _prepare_sys_path(tools: Path) -> None:
    own_tools = Path(__file__).resolve().parents[2] / "tools"
    sys.path[:] = [p for p in sys.path if not p or Path(p).resolve() != own_tools]  # our test.py != theirs
    if "" not in sys.path:
        sys.path.insert(0, "")
    sys.path.insert(0, str(tools))
    if importlib.util.find_spec("pcdet") is None:  # a built but uninstalled checkout
        sys.path.append(str(tools.parent))
    # tools/_init_path.py inserts '../' (relative to the cwd) into sys.path; not needed here.
    sys.modules.setdefault("_init_path", types.ModuleType("_init_path"))


def run_pcdet_tool(script: str, argv: Optional[Sequence[str]] = None) -> None:
    """Register the plugin, install the hooks and run OpenPCDet's own ``tools/<script>`` as __main__.

    The working directory stays the caller's (unless ``--chdir_tools``), so ``--cfg_file``,
    ``_BASE_CONFIG_``, ``DATA_PATH`` and ``--pretrained_model`` resolve as typed, e.g. from this
    repository's root. Launcher flags: ``--pcdet_tools DIR``, ``--skip_preflight``, ``--chdir_tools``,
    ``--seed N``.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    ours, rest = split_launcher_args(argv)
    tools = find_pcdet_tools(ours.pcdet_tools)
    rest = translate_local_rank(rest)
    if not ours.skip_preflight:
        run_preflight(_arg_value(rest, "--cfg_file"), os.environ)
    _prepare_sys_path(tools)
    register()
    install_config_lookup()
    install_custom_evaluation()
    allow_numpy_scalars_in_checkpoints()
    choose_worker_start_method()
    if ours.seed is not None:  # before OpenPCDet builds the model and the data order
        from ..seeding import seed_everything

        seed_everything(ours.seed)
    if script == "train.py":
        install_optimizer_hook(merged_epochs="--merge_all_iters_to_one_epoch" in _tool_flags(rest))
        install_group_lr_tensorboard()
        install_batched_voxelnext_targets()
    if ours.chdir_tools:
        os.chdir(tools)
    sys.argv = [str(tools / script)] + rest
    runpy.run_path(str(tools / script), run_name="__main__")


def launcher_main(script: str) -> int:
    try:
        run_pcdet_tool(script)
    except (LauncherError, PcdetNotAvailable) as err:
        sys.stderr.write(f"pcdet_rmae_ts: error: {err}\n")
        return 2
    return 0

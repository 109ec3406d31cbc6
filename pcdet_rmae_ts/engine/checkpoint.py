"""Checkpoints in OpenPCDet's layout, written atomically and loaded with weights_only.

A checkpoint holds ``model_state``, ``optimizer_state``, ``epoch``, ``it`` and
``version`` (OpenPCDet's five keys) plus what an exact resume needs: scheduler,
AMP scaler, RNG states and the model's ``extra_state()`` (the masking generator), all as
tensors or plain Python.
"""
from __future__ import annotations

import logging
import os
import pickle
import random
import re
import zipfile
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
from torch import nn

from .. import __version__

CKPT_PATTERN = re.compile(r"checkpoint_epoch_(\d+)\.pth$")
LATEST_NAME = "latest_model.pth"


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") else model


def rng_state() -> dict:
    """torch / numpy / python RNG states as tensors and plain Python (weights_only-safe)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": _to_lists(random.getstate()),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _to_lists(value):
    if isinstance(value, tuple):
        return [_to_lists(v) for v in value]
    return value


def _to_tuples(value):
    if isinstance(value, list):
        return tuple(_to_tuples(v) for v in value)
    return value


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np_state = state["numpy"]
    np.random.set_state((np_state["kind"], np_state["keys"].numpy().astype(np.uint32), np_state["pos"],
                         np_state["has_gauss"], np_state["cached_gaussian"]))
    random.setstate(_to_tuples(state["python"]))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def checkpoint_state(model: nn.Module, optimizer=None, scheduler=None, scaler=None, epoch: int = 0,
                     it: int = 0, extra: Optional[dict] = None) -> dict:
    inner = unwrap(model)
    state = {
        "model_state": {k: v.detach().cpu() for k, v in inner.state_dict().items()},
        "optimizer_state": optimizer.state_dict() if optimizer is not None else None,
        "epoch": int(epoch),
        "it": int(it),
        "version": f"pcdet_rmae_ts+{__version__}",
        "scheduler_state": scheduler.state_dict() if scheduler is not None else None,
        "scaler_state": scaler.state_dict() if scaler is not None and scaler.is_enabled() else None,
        "rng_state": rng_state(),
    }
    if hasattr(inner, "extra_state"):  # the model's own resume state (PretrainModel: masker_state)
        state.update(inner.extra_state())
    if extra:
        state.update(extra)
    return state


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be written or used; the message names the file and what to do."""


class CorruptCheckpointError(CheckpointError):
    """A checkpoint file that is truncated or damaged (not a readable torch archive)."""


def _first_line(err: BaseException) -> str:
    """The first line of an error's message ('' when it has none): torch's messages run on."""
    text = str(err).strip()
    return text.splitlines()[0] if text else ""


def _remove_quietly(path: Path) -> None:
    try:
        path.unlink()
    except OSError:
        pass


def save_checkpoint(state: dict, path: Path) -> Path:
    """Write ``state`` to ``path`` via a temporary file and an atomic rename.

    Any failure (disk full, unwritable folder) removes the temporary file, leaves earlier checkpoints
    and an existing ``path`` untouched, and raises CheckpointError naming the path."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(state, tmp)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as err:  # torch reports write failures as RuntimeError
        _remove_quietly(tmp)
        if isinstance(err, OSError) and err.errno:
            reason = os.strerror(err.errno)
        else:
            reason = _first_line(err) or type(err).__name__
        raise CheckpointError(f"Could not write checkpoint {path}: {reason}. Free disk space or fix the "
                              f"permissions of {path.parent} (or choose another --output_dir); earlier "
                              f"checkpoints in that folder are intact.") from err
    return path


def load_checkpoint(path: Path, trust_pickle: bool = False) -> dict:
    """Load a checkpoint on the CPU. Only tensors and plain Python are accepted unless
    ``trust_pickle`` (``--trust_checkpoint``) is given for a file you trust.

    Raises FileNotFoundError, CorruptCheckpointError for a truncated/damaged file, or
    CheckpointError when the file holds pickled objects and ``trust_pickle`` is off."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Checkpoint {path} does not exist.")
    if not _has_torch_layout(path):
        raise CorruptCheckpointError(f"Checkpoint {path} is truncated or corrupt (not a complete torch.save archive, "
                                     f"{path.stat().st_size} bytes); it cannot be loaded.")
    try:
        return torch.load(path, map_location="cpu", weights_only=not trust_pickle)
    except Exception as err:  # noqa: BLE001 - re-raised with the fix
        first = _first_line(err)[:200] or "empty or cut short"
        if not trust_pickle and _refused_global(err):
            raise CheckpointError(
                f"Could not load {path} with weights_only=True (it holds pickled Python objects). If you trust "
                f"this file (e.g. an old OpenPCDet checkpoint with numpy values), pass --trust_checkpoint.") from err
        if _is_damage(err):
            raise CorruptCheckpointError(f"Checkpoint {path} is truncated or corrupt ({type(err).__name__}: "
                                         f"{first}); it cannot be loaded.") from err
        raise CheckpointError(f"Could not load checkpoint {path} ({type(err).__name__}: {first}).") from err


# torch.save's format before torch 1.6 (still written with _use_new_zipfile_serialization=False): a
# pickle (protocol 2) of this magic number first.
LEGACY_MAGIC = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"


def _has_torch_layout(path: Path) -> bool:
    """A complete zip archive (torch >= 1.6; a cut file loses its central directory) or a legacy file."""
    if zipfile.is_zipfile(path):
        return True
    with open(path, "rb") as handle:
        return handle.read(len(LEGACY_MAGIC)) == LEGACY_MAGIC


def _refused_global(err: Exception) -> bool:
    """weights_only refused a pickled class or function: a valid file holding more than tensors."""
    return isinstance(err, pickle.UnpicklingError) and "Unsupported global" in str(err)


def _is_damage(err: Exception) -> bool:
    """Errors torch.load gives for damaged bytes inside a complete-looking file."""
    if isinstance(err, PermissionError):
        return False
    if isinstance(err, (EOFError, zipfile.BadZipFile, pickle.UnpicklingError, OSError)):
        return True
    return isinstance(err, RuntimeError) and ("PytorchStreamReader" in str(err) or "zip archive" in str(err))


def list_checkpoints(ckpt_dir: Path) -> List[Path]:
    """Epoch checkpoints sorted by epoch."""
    found = [(int(m.group(1)), p) for p in Path(ckpt_dir).glob("checkpoint_epoch_*.pth")
             if (m := CKPT_PATTERN.search(p.name))]
    return [p for _, p in sorted(found)]


def resumable_checkpoints(ckpt_dir: Path) -> List[Path]:
    """Epoch checkpoints and latest_model.pth, newest first (by modification time)."""
    candidates = list_checkpoints(ckpt_dir)
    latest = Path(ckpt_dir) / LATEST_NAME
    if latest.is_file():
        candidates.append(latest)
    return sorted(candidates, key=lambda p: p.stat().st_mtime, reverse=True)


def load_newest_checkpoint(ckpt_dir: Path, logger: logging.Logger,
                           trust_pickle: bool = False) -> Tuple[Optional[Path], Optional[dict]]:
    """Auto-resume: load the newest checkpoint of ``ckpt_dir`` that loads.

    A truncated or corrupt file (a crash or a full disk while writing outside the atomic path, a bad
    copy) is renamed to ``<name>.corrupt`` with a WARNING, and the next newest one is tried.
    Returns (path, state), or (None, None) when there is nothing to resume from."""
    for path in resumable_checkpoints(ckpt_dir):
        try:
            return path, load_checkpoint(path, trust_pickle=trust_pickle)
        except CorruptCheckpointError as err:
            aside = path.with_name(path.name + ".corrupt")
            try:
                os.replace(path, aside)
                moved = f"Moved it aside to {aside.name}"
            except OSError as move_err:
                moved = f"Could not move it aside ({move_err.strerror})"
            logger.warning("%s %s; resuming from the next newest checkpoint instead.", err, moved)
    return None, None


def prune_checkpoints(ckpt_dir: Path, keep: int) -> None:
    for old in list_checkpoints(ckpt_dir)[:-keep] if keep > 0 else []:
        old.unlink()


SHAPE_CAUSE = ("the file was written by a model with another architecture or input: compare "
               "MODEL.BACKBONE_3D.CHANNELS / OUT_CHANNEL / FEATURE_DIM, the voxel features "
               "(DATA_CONFIG.POINT_FEATURE_ENCODING.used_feature_list) and the decoder settings with the config "
               "the checkpoint was trained with")
SHOWN_KEYS = 5


def shape_mismatches(own: Dict[str, torch.Tensor], state: Dict[str, torch.Tensor]) -> List[str]:
    """``'key: (file shape) vs (model shape)'`` for every key both have with different shapes."""
    return sorted(f"{k}: {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
                  for k in state if k in own and hasattr(state[k], "shape") and own[k].shape != state[k].shape)


def load_weights_report(model: nn.Module, state: Dict[str, torch.Tensor], logger: logging.Logger) -> dict:
    """Load matching weights (``--pretrained_model``) and log matched / missing / unexpected /
    shape-mismatched keys. Returns the four key lists.

    Shape mismatches are a WARNING with the counts, the first few keys and the likely cause (the
    full lists go to DEBUG); missing or unexpected keys alone are expected (a pretrained file has a
    teacher and decoders, a detector has heads) and stay at INFO."""
    own = unwrap(model).state_dict()
    matched = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    report = {
        "matched": sorted(matched),
        "missing": sorted(k for k in own if k not in state),
        "unexpected": sorted(k for k in state if k not in own),
        "shape_mismatched": shape_mismatches(own, state),
    }
    unwrap(model).load_state_dict(matched, strict=False)
    counts = (len(report["matched"]), len(report["missing"]), len(report["unexpected"]),
              len(report["shape_mismatched"]))
    if report["shape_mismatched"]:
        logger.warning("Pretrained weights: %d matched, %d missing, %d unexpected, %d shape-mismatched (not loaded, "
                       "left at their initial values). Likely cause: %s. First mismatches: %s", *counts, SHAPE_CAUSE,
                       "; ".join(report["shape_mismatched"][:SHOWN_KEYS]))
    else:
        logger.info("Pretrained weights: %d matched, %d missing, %d unexpected, %d shape-mismatched", *counts)
    for kind in ("missing", "unexpected", "shape_mismatched"):
        for key in report[kind]:
            logger.debug("  %s: %s", kind, key)
    return report


def check_resume_shapes(model: nn.Module, state: Dict[str, torch.Tensor], path: Path) -> None:
    """Raise one CheckpointError when a resume checkpoint does not fit the model (another config)."""
    bad = shape_mismatches(unwrap(model).state_dict(), state)
    if bad:
        raise CheckpointError(f"Cannot resume from {path}: {len(bad)} of {len(state)} weights have other shapes "
                              f"than this model's (first: {'; '.join(bad[:3])}). Likely cause: {SHAPE_CAUSE}. "
                              f"Resume with the config the checkpoint was trained with, or start a new run "
                              f"(another --extra_tag; --pretrained_model loads the weights that fit).")

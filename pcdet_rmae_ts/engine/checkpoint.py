"""Checkpoints in OpenPCDet's layout, written atomically and loaded with weights_only.

A checkpoint holds ``model_state``, ``optimizer_state``, ``epoch``, ``it`` and
``version`` (OpenPCDet's five keys) plus what an exact resume needs: scheduler,
AMP scaler, masking generator and RNG states, all as tensors or plain Python.
"""
from __future__ import annotations

import logging
import os
import random
import re
from pathlib import Path
from typing import Dict, List, Optional

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
    masker = getattr(getattr(inner, "backbone_3d", None), "masker", None)
    if masker is not None:
        state["masker_state"] = {k: v.cpu() for k, v in masker.state_dict().items()}
    if extra:
        state.update(extra)
    return state


def save_checkpoint(state: dict, path: Path) -> Path:
    """Write ``state`` to ``path`` via a temporary file and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)
    return path


def load_checkpoint(path: Path, trust_pickle: bool = False) -> dict:
    """Load a checkpoint on the CPU. Only tensors and plain Python are accepted unless
    ``trust_pickle`` (``--trust_checkpoint``) is given for a file you trust."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Checkpoint {path} does not exist.")
    try:
        return torch.load(path, map_location="cpu", weights_only=not trust_pickle)
    except Exception as err:  # noqa: BLE001 - re-raised with the fix
        if trust_pickle:
            raise
        raise RuntimeError(f"Could not load {path} with weights_only=True ({type(err).__name__}: {err}). "
                           f"If you trust this file (e.g. an old OpenPCDet checkpoint with numpy values), "
                           f"pass --trust_checkpoint.") from err


def list_checkpoints(ckpt_dir: Path) -> List[Path]:
    """Epoch checkpoints sorted by epoch."""
    found = [(int(m.group(1)), p) for p in Path(ckpt_dir).glob("checkpoint_epoch_*.pth")
             if (m := CKPT_PATTERN.search(p.name))]
    return [p for _, p in sorted(found)]


def latest_checkpoint(ckpt_dir: Path) -> Optional[Path]:
    """The most recent resumable file: the newest of the last epoch checkpoint and latest_model.pth."""
    candidates = list_checkpoints(ckpt_dir)[-1:]
    latest = Path(ckpt_dir) / LATEST_NAME
    if latest.is_file():
        candidates.append(latest)
    return max(candidates, key=lambda p: p.stat().st_mtime) if candidates else None


def prune_checkpoints(ckpt_dir: Path, keep: int) -> None:
    for old in list_checkpoints(ckpt_dir)[:-keep] if keep > 0 else []:
        old.unlink()


def load_weights_report(model: nn.Module, state: Dict[str, torch.Tensor], logger: logging.Logger) -> dict:
    """Load matching weights (``--pretrained_model``) and log matched / missing / unexpected /
    shape-mismatched keys. Returns the four key lists."""
    own = unwrap(model).state_dict()
    matched = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    report = {
        "matched": sorted(matched),
        "missing": sorted(k for k in own if k not in state),
        "unexpected": sorted(k for k in state if k not in own),
        "shape_mismatched": sorted(f"{k}: {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
                                   for k in state if k in own and own[k].shape != state[k].shape),
    }
    unwrap(model).load_state_dict(matched, strict=False)
    logger.info("Pretrained weights: %d matched, %d missing, %d unexpected, %d shape-mismatched",
                len(report["matched"]), len(report["missing"]), len(report["unexpected"]),
                len(report["shape_mismatched"]))
    for kind in ("missing", "unexpected", "shape_mismatched"):
        for key in report[kind]:
            logger.info("  %s: %s", kind, key)
    return report

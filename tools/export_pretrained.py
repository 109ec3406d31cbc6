"""Export the pretrained VoxelNeXt encoder as a clean OpenPCDet checkpoint.

``python tools/export_pretrained.py --ckpt X --weights student|teacher --out Y`` keeps only
the encoder weights under ``vfe.*`` / ``backbone_3d.*`` with VoxelNeXt's key names (the EMA
teacher's ``backbone_3d.teacher.*`` weights are renamed to ``backbone_3d.*`` with
``--weights teacher``), drops decoder, projectors, teacher copy and ``global_step``, and writes
``model_state``, ``epoch``, ``it``, ``version``. The result loads with ``--pretrained_model``
into the plugin detector and into a stock VoxelNeXt config.
"""
from __future__ import annotations

import argparse
import os
import sys
from collections import Counter
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
from pcdet_rmae_ts.engine.checkpoint import load_checkpoint  # noqa: E402  (imports neither spconv nor pcdet)

# The VoxelNeXt encoder's submodules (pcdet_rmae_ts.models.encoder.ENCODER_MODULES); listed here so
# that the tool does not need spconv.
ENCODER_MODULES = ("conv_input", "conv1", "conv2", "conv3", "conv4", "conv5", "conv6", "conv_out", "shared_conv")
BACKBONE = "backbone_3d."
TEACHER = "backbone_3d.teacher."


class ExportError(ValueError):
    """The checkpoint cannot be exported as asked; the message says why and what to do."""


def _encoder_key(rest: str) -> bool:
    return rest.split(".", 1)[0] in ENCODER_MODULES


def select_encoder_weights(model_state: Dict[str, torch.Tensor], weights: str = "student"
                           ) -> Tuple[Dict[str, torch.Tensor], List[str]]:
    """Pick the encoder weights of ``weights`` ('student' or 'teacher') out of a pretraining state dict.

    Returns ``(exported, dropped)``: ``exported`` maps OpenPCDet keys (``vfe.*``,
    ``backbone_3d.<encoder module>.*``) to tensors; ``dropped`` lists the input keys left out.
    Raises :class:`ExportError` when the teacher is requested but absent or incomplete, or when
    no encoder weight is found.
    """
    if weights not in ("student", "teacher"):
        raise ExportError(f"--weights must be 'student' or 'teacher', got {weights!r}")
    student = {k: v for k, v in model_state.items()
               if k.startswith(BACKBONE) and not k.startswith(TEACHER) and _encoder_key(k[len(BACKBONE):])}
    if not student:
        raise ExportError("no VoxelNeXt encoder weights (backbone_3d.conv_input..shared_conv) in this checkpoint; "
                          "is it a pretraining checkpoint of pcdet_rmae_ts or OpenPCDet?")
    exported = {k: v for k, v in model_state.items() if k.startswith("vfe.")}
    if weights == "student":
        exported.update(student)
    else:
        teacher = {BACKBONE + k[len(TEACHER):]: v for k, v in model_state.items()
                   if k.startswith(TEACHER) and _encoder_key(k[len(TEACHER):])}
        if not teacher:
            raise ExportError("--weights teacher: this checkpoint has no EMA teacher (no 'backbone_3d.teacher.*' "
                              "keys). Only TEACHER_BACKBONE_TYPE: 'ema' keeps a separate teacher; with 'identical' "
                              "the teacher is the student, so export with --weights student.")
        missing = sorted(set(student) - set(teacher))
        if missing:
            raise ExportError(f"--weights teacher: the teacher lacks {len(missing)} encoder weights the student "
                              f"has (first: {missing[0]}); the checkpoint is inconsistent.")
        exported.update(teacher)
    dropped = sorted(k for k in model_state if k not in exported and not
                     (weights == "teacher" and k.startswith(TEACHER) and BACKBONE + k[len(TEACHER):] in exported))
    return exported, dropped


def _group(key: str) -> str:
    parts = key.split(".")
    if key.startswith(TEACHER):
        return "backbone_3d.teacher"
    return ".".join(parts[:2]) if len(parts) > 1 else parts[0]


def format_report(exported: Dict[str, torch.Tensor], dropped: Sequence[str], weights: str) -> str:
    """Human-readable key report: exported count per module, dropped keys grouped by module."""
    lines = [f"exported {len(exported)} encoder tensors ({weights} weights, "
             f"{sum(v.numel() for v in exported.values())} values):"]
    for module, count in sorted(Counter(_group(k) for k in exported).items()):
        lines.append(f"  kept     {module:<32s} {count:4d} keys")
    lines.append(f"dropped {len(dropped)} keys (not part of the VoxelNeXt encoder):")
    for module, count in sorted(Counter(_group(k) for k in dropped).items()):
        lines.append(f"  dropped  {module:<32s} {count:4d} keys")
    return "\n".join(lines)


def load_pretraining_checkpoint(path: Path, trust_pickle: bool = False) -> dict:
    try:
        checkpoint = load_checkpoint(Path(path), trust_pickle=trust_pickle)
    except (FileNotFoundError, RuntimeError) as err:
        raise ExportError(str(err)) from err
    if not isinstance(checkpoint, dict) or "model_state" not in checkpoint:
        raise ExportError(f"{path} has no 'model_state' entry; it is not an OpenPCDet-layout checkpoint")
    return checkpoint


def export_pretrained(ckpt: Path, out: Path, weights: str = "student", trust_pickle: bool = False) -> str:
    """Write the clean checkpoint to ``out`` (atomically) and return the key report."""
    try:
        from pcdet_rmae_ts import __version__
    except ImportError:  # run from a checkout without installing
        sys.path.append(str(Path(__file__).resolve().parents[1]))
        from pcdet_rmae_ts import __version__

    checkpoint = load_pretraining_checkpoint(ckpt, trust_pickle)
    exported, dropped = select_encoder_weights(checkpoint["model_state"], weights)
    state = {
        "model_state": {k: v.detach().cpu().clone() for k, v in exported.items()},
        "epoch": int(checkpoint.get("epoch", 0) or 0),
        "it": int(checkpoint.get("it", 0) or 0),
        "version": f"pcdet_rmae_ts+{__version__} (export of {weights} encoder)",
    }
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, out)
    return format_report(exported, dropped, weights) + f"\nwrote {out}"


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt", required=True, help="pretraining checkpoint (pcdet_rmae_ts engine or detector)")
    parser.add_argument("--weights", choices=("student", "teacher"), default="student",
                        help="which encoder to export (teacher = the EMA teacher)")
    parser.add_argument("--out", required=True, help="output .pth for --pretrained_model")
    parser.add_argument("--trust_checkpoint", action="store_true",
                        help="load with weights_only=False (only for files you trust)")
    args = parser.parse_args(argv)
    try:
        report = export_pretrained(Path(args.ckpt), Path(args.out), args.weights, args.trust_checkpoint)
    except ExportError as err:
        print(f"export_pretrained: error: {err}", file=sys.stderr)
        return 2
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())

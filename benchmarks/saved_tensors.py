"""Memory kept for the backward pass, by part of the Phase 2 pretraining step (issue 15's peak-memory cap).

What autograd saves between the forward and the backward pass is most of a training step's peak. This
script runs one forward of bench_pretrain's ``phase2`` model (the engine's PretrainModel, dense frames)
under ``torch.autograd.graph.saved_tensors_hooks`` and adds up the bytes of every tensor saved for
backward, once per storage, by the part of the step that saved it: the student encoder, the occupancy
decoder and loss, the student projector, and each teacher-student loss (MLFR by scale: decoder conv,
decoder head, per-site losses). It counts bytes, not time, so a CPU run answers it (float32; under CUDA
autocast the dtypes of some parts differ). The teacher runs without gradient and saves nothing.

    PYTHONPATH=. python benchmarks/saved_tensors.py [--batch-size 2] [--small] [--out FILE|DIR|-]
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import logging
import sys
import tempfile
from pathlib import Path
from typing import Callable, Dict, Iterator

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_pretrain as bp  # noqa: E402
from results_file import add_out_argument, append_run, card_name  # noqa: E402

OTHER = "other (VFE, masking, the loss sums)"


class SavedBytes:
    """Bytes saved for backward, by the innermost labelled part active when autograd saved them."""

    def __init__(self) -> None:
        self.label = OTHER
        self.by_part: Dict[str, int] = {}
        self._storages = set()

    def labelled(self, part: str, fn: Callable) -> Callable:
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            outer, self.label = self.label, part
            try:
                return fn(*args, **kwargs)
            finally:
                self.label = outer
        return wrapper

    def pack(self, tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in self._storages and storage.nbytes() > 0:
            self._storages.add(storage.data_ptr())
            self.by_part[self.label] = self.by_part.get(self.label, 0) + storage.nbytes()
        return tensor

    @contextlib.contextmanager
    def recording(self) -> Iterator["SavedBytes"]:
        with torch.autograd.graph.saved_tensors_hooks(self.pack, lambda t: t):
            yield self


def label_parts(backbone, saved: SavedBytes) -> None:
    """Wrap the parts of a Phase 2 backbone (instance attributes: this model only)."""
    backbone.encode = saved.labelled("student encoder", backbone.encode)
    backbone.occupancy_decoder.forward = saved.labelled("occupancy decoder", backbone.occupancy_decoder.forward)
    backbone._occupancy_loss = saved.labelled("occupancy loss", backbone._occupancy_loss)
    backbone.student_projector.forward = saved.labelled("student projector", backbone.student_projector.forward)
    for name, loss in backbone.ts_losses.items():
        loss.forward = saved.labelled(name, loss.forward)
        for scale, decoder in getattr(loss, "decoders", {}).items():
            if decoder.conv is not None:
                decoder.conv.forward = saved.labelled(f"{name} {scale} decoder conv", decoder.conv.forward)
            decoder.forward = saved.labelled(f"{name} {scale} decoder head", decoder.forward)
        if hasattr(loss, "scale_loss"):  # MLFR: what the per-site losses keep, outside the decoders
            loss.scale_loss = saved.labelled(f"{name} targets and per-site losses", loss.scale_loss)


def measure(batch_size: int, small: bool, data: Path) -> dict:
    frames = bp.write_frames(data / f"{'demo' if small else 'dense'}_{2 * batch_size}", 2 * batch_size,
                             "demo" if small else "dense")
    cfg = bp.data_cfg(frames, small)
    dataset, batches = bp.stage_batches(cfg, batch_size, torch.device("cpu"), 0, max_batches=1)
    torch.manual_seed(0)
    model = bp.build_model("phase2", bp.row_config("phase2"), dataset).train()
    saved = SavedBytes()
    label_parts(model.backbone_3d, saved)
    with saved.recording():
        loss, _ = model(batches[0])
    loss.backward()  # the saved tensors are usable: the step is a real one
    return {"batch_size": batch_size, "voxels": int(batches[0]["voxel_coords"].shape[0]),
            "mb_by_part": {k: v / 2**20 for k, v in sorted(saved.by_part.items(), key=lambda kv: -kv[1])},
            "mb_total": sum(saved.by_part.values()) / 2**20}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--small", action="store_true", help="bench_pretrain's reduced grid (demo frames)")
    parser.add_argument("--data", default=str(Path(tempfile.gettempdir()) / "pcdet_rmae_ts_bench"))
    add_out_argument(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    result = measure(args.batch_size, args.small, Path(args.data))
    print(f"Phase 2 step, batch {result['batch_size']} ({result['voxels']} voxels), float32, CPU: "
          f"MB saved for backward by part")
    for part, mb in result["mb_by_part"].items():
        print(f"{part:<44}{mb:>10.1f}")
    print(f"{'total':<44}{result['mb_total']:>10.1f}")
    append_run(args.out, "saved_tensors", card_name(torch.device("cpu")), result, label=args.label)
    return result


if __name__ == "__main__":
    main()

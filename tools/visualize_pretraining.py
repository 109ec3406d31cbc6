"""Pictures of a pretraining config / run: masking BEV, occupancy reconstruction, training curves.

    python tools/visualize_pretraining.py --cfg_file cfgs/demo/rmae_cmae_demo_pretraining.yaml \
        --ckpt output/demo/rmae_cmae_demo_pretraining/default/ckpt/checkpoint_epoch_4.pth \
        --frame 000003 --out output/pictures

Writes ``masking_bev_<frame>.png`` and ``occupancy_<frame>.png`` (untrained model without
``--ckpt``), plus ``training_curves.png`` and ``teacher_similarity.png`` from the event files
under ``--logdir`` (default: the run's ``tensorboard/`` folder beside the checkpoint's ``ckpt/``).
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import List, Optional, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import torch  # noqa: E402

from pcdet_rmae_ts import viz  # noqa: E402

logger = logging.getLogger("visualize_pretraining")


def build_arg_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Write PNG pictures of R-MAE masking, occupancy "
                                                 "reconstruction and training curves.")
    parser.add_argument("--cfg_file", type=str, required=True, help="pretraining config (YAML)")
    parser.add_argument("--ckpt", type=str, default=None, help="checkpoint to load (default: untrained model)")
    parser.add_argument("--frame", type=str, default=None,
                        help="frame id (e.g. 000003) or index into the training split (default: first frame)")
    parser.add_argument("--logdir", type=str, default=None,
                        help="tensorboard folder of a run (default: <run>/tensorboard next to --ckpt's ckpt/)")
    parser.add_argument("--out", type=str, required=True, help="folder for the PNG files")
    parser.add_argument("--seed", type=int, default=0, help="seed of the masking draw")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--no_model", action="store_true", help="only the training curves (needs --logdir)")
    parser.add_argument("--trust_checkpoint", action="store_true",
                        help="allow loading pickled (non weights_only) checkpoints you trust")
    parser.add_argument("--set", dest="set_cfgs", default=None, nargs=argparse.REMAINDER,
                        help="override config keys: --set KEY VALUE [KEY VALUE ...]")
    return parser


def load_config(args):
    from pcdet_rmae_ts.config import cfg_from_list, cfg_from_yaml_file

    cfg = cfg_from_yaml_file(args.cfg_file)
    if args.set_cfgs:
        cfg_from_list(args.set_cfgs, cfg)
    return cfg


def load_frame(cfg, frame: Optional[str]):
    """(dataset, collated one-frame batch, frame id). Augmentation is off: the frame as recorded."""
    from pcdet_rmae_ts.data import PretrainDataset
    from pcdet_rmae_ts.engine.pretrain import prepare_data_path

    prepare_data_path(cfg, logger)
    dataset = PretrainDataset(cfg.DATA_CONFIG, cfg.CLASS_NAMES, training=True, logger=logger)
    dataset.data_augmentor = None
    if frame is None:
        index = 0
    elif frame in dataset.frame_ids:
        index = dataset.frame_ids.index(frame)
    elif frame.isdigit() and int(frame) < len(dataset):
        index = int(frame)
    else:
        raise ValueError(f"--frame {frame} is neither a frame id nor an index of the {len(dataset)} frames "
                         f"under {dataset.root_path} (first ids: {dataset.frame_ids[:5]}).")
    batch = PretrainDataset.collate_batch([dataset.load_sample(index, 0)])
    return dataset, batch, dataset.frame_ids[index]


def build_model(cfg, dataset, ckpt: Optional[str], trust: bool, device: torch.device):
    from pcdet_rmae_ts.engine.checkpoint import load_checkpoint, load_weights_report
    from pcdet_rmae_ts.models.pretrain_model import PretrainModel

    model = PretrainModel.from_config(cfg, dataset)
    if ckpt:
        load_weights_report(model, load_checkpoint(Path(ckpt), trust)["model_state"], logger)
    else:
        logger.info("No --ckpt: pictures of an untrained model")
    return model.to(device)


def model_inputs(batch: dict, dataset, device: torch.device) -> dict:
    """The collated batch on ``device`` as the trainer gives it to the model: with
    ``DATA_CONFIG.VOXELIZE_ON_DEVICE`` the samples carry points only and the engine's
    ``BatchVoxelizer`` voxelises them on the device (``engine.batch.model_batch``, as training)."""
    from pcdet_rmae_ts.engine.batch import model_batch

    if not dataset.voxelize_on_device:
        return model_batch(batch, device)
    from pcdet_rmae_ts.data.device_voxelizer import BatchVoxelizer

    logger.info("Voxelising the frame on %s (DATA_CONFIG.VOXELIZE_ON_DEVICE)", device)
    return model_batch(batch, device, BatchVoxelizer.from_dataset(dataset))


@torch.no_grad()
def run_model(model, inputs: dict, device: torch.device, seed: int) -> None:
    """Training-mode forward (so the student sees the masked voxels) with BatchNorm in eval mode
    (a checkpoint's running statistics) on ``model_inputs``; the backbone keeps its ``forward_ret_dict``."""
    model.train()
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.eval()
    model.backbone_3d.masker.generator(device).manual_seed(seed)
    model(inputs)


def model_pictures(model, frame_id: str, out: Path, label: str) -> List[Path]:
    from pcdet_rmae_ts.occupancy import occupancy_targets

    backbone = model.backbone_3d
    ret = backbone.forward_ret_dict
    written = [viz.save_figure(viz.snapshot_mask_figure(model.masking_snapshot(), 0, f"frame {frame_id}"),
                               out / f"masking_bev_{frame_id}.png")]
    stride = backbone.occupancy_cfg.stride
    _, ny, nx = backbone.occupancy_shape
    target = occupancy_targets(ret["coords"], 1, backbone.sparse_shape, stride)[0]
    masked = viz.masked_cells(ret["mask"], 0, (ny, nx), stride, backbone.voxel_size, backbone.point_cloud_range)
    # the cells training's occ_* metrics count: inside the range when RESTRICT_TO_RANGE, else all
    valid = backbone.occupancy_valid.cpu().numpy() if backbone.occupancy_cfg.restrict_to_range else None
    vx, vy = backbone.voxel_size[:2]
    x0, y0 = backbone.point_cloud_range[:2]
    extent = (x0, x0 + nx * stride * vx, y0, y0 + ny * stride * vy)
    fig = viz.occupancy_figure(ret["occupancy_logits"][0], target, masked, extent, valid,
                               f"frame {frame_id} · occupancy at stride {stride} · {label}")
    written.append(viz.save_figure(fig, out / f"occupancy_{frame_id}.png"))
    return written


def default_logdir(ckpt: Optional[str]) -> Optional[Path]:
    if not ckpt:
        return None
    candidate = Path(ckpt).resolve().parent.parent / "tensorboard"
    return candidate if candidate.is_dir() else None


def curve_pictures(logdir: Path, out: Path) -> List[Path]:
    scalars = viz.read_scalars(logdir)
    written = [viz.save_figure(viz.training_curves_figure(scalars, f"training curves · {logdir}"),
                               out / "training_curves.png")]
    similarity = viz.similarity_figure(scalars)
    if similarity is None:
        logger.info("No %s in %s (no teacher): skipping the similarity plot", viz.SIMILARITY_TAG, logdir)
    else:
        written.append(viz.save_figure(similarity, out / "teacher_similarity.png"))
    return written


def main(argv: Optional[Sequence[str]] = None) -> List[Path]:
    args = build_arg_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)5s  %(message)s")
    out = Path(args.out)
    written: List[Path] = []
    if not args.no_model:
        cfg = load_config(args)
        device = torch.device(args.device)
        dataset, batch, frame_id = load_frame(cfg, args.frame)
        model = build_model(cfg, dataset, args.ckpt, args.trust_checkpoint, device)
        run_model(model, model_inputs(batch, dataset, device), device, args.seed)
        label = Path(args.ckpt).name if args.ckpt else "untrained model"
        written += model_pictures(model, frame_id, out, label)
    logdir = Path(args.logdir) if args.logdir else default_logdir(args.ckpt)
    if logdir is not None:
        written += curve_pictures(logdir, out)
    elif args.no_model:
        raise SystemExit("--no_model needs --logdir (or a --ckpt inside a run folder).")
    for path in written:
        print(path)
    return written


if __name__ == "__main__":
    main()

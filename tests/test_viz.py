"""Pictures: the visualisation tool on the built-in dataset, curves from a real run's event
files, the tfevents reader, the BEV raster and confusion maps against references, the engine hook."""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from matplotlib.image import imread

from pcdet_rmae_ts import viz
from pcdet_rmae_ts.engine.trainer import LoopConfig, Trainer, TrainState
from pcdet_rmae_ts.masking import MaskingConfig, RadialMasker

REPO = Path(__file__).resolve().parents[1]
DEMO_CFG = REPO / "cfgs" / "demo" / "rmae_cmae_demo_pretraining.yaml"
VOXEL, PCR = [0.2, 0.2, 0.2], [-40.0, -40.0, -3.0, 40.0, 40.0, 5.0]


def load_tool():
    spec = importlib.util.spec_from_file_location("visualize_pretraining", REPO / "tools" / "visualize_pretraining.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def data_set(tmp: Path) -> list:
    return ["--set", "DATA_CONFIG.DATA_PATH", str(tmp / "demo"), "DATA_CONFIG.SYNTHETIC.FRAMES", "10"]


def colour_pixels(png: Path, colour: str, tol: float = 0.03) -> int:
    image = imread(png)[..., :3]
    target = viz._rgb(colour).astype(np.float32) / 255.0
    return int((np.abs(image - target).max(-1) < tol).sum())


@pytest.fixture(scope="module")
def short_run(tmp_path_factory):
    """A real 2-epoch demo run (8 iterations); returns (tmp, run folder)."""
    tmp = tmp_path_factory.mktemp("vizrun")
    cmd = [sys.executable, str(REPO / "tools" / "train_rmae_cmae_phase1.py"), "--cfg_file", str(DEMO_CFG),
           "--workers", "0", "--epochs", "2", "--fix_random_seed", "--output_dir", str(tmp / "output"),
           *data_set(tmp), "OPTIMIZATION.BATCH_SIZE_PER_GPU", "2"]
    subprocess.run(cmd, check=True, capture_output=True, timeout=300,
                   env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"})
    return tmp, tmp / "output" / "demo" / "rmae_cmae_demo_pretraining" / "default"


def test_tool_with_checkpoint_writes_all_pictures(short_run, tmp_path):
    tmp, run = short_run
    written = load_tool().main(["--cfg_file", str(DEMO_CFG), "--ckpt", str(run / "ckpt" / "checkpoint_epoch_2.pth"),
                                "--frame", "000002", "--out", str(tmp_path), *data_set(tmp)])
    names = sorted(p.name for p in written)
    assert names == ["masking_bev_000002.png", "occupancy_000002.png", "teacher_similarity.png",
                     "training_curves.png"]  # logdir found beside the checkpoint's ckpt/
    for path in written:
        assert path.stat().st_size > 10_000
    bev = tmp_path / "masking_bev_000002.png"
    kept, masked = colour_pixels(bev, viz.KEPT_COLOR), colour_pixels(bev, viz.MASKED_COLOR)
    assert kept > 200 and masked > 200, (kept, masked)
    occupancy = tmp_path / "occupancy_000002.png"
    assert colour_pixels(occupancy, viz.TP_COLOR) > 100


def test_tool_untrained_model_by_index(short_run, tmp_path):
    tmp, _ = short_run
    written = load_tool().main(["--cfg_file", str(DEMO_CFG), "--frame", "1", "--out", str(tmp_path),
                                *data_set(tmp), "MODEL.BACKBONE_3D.MASKED_RATIO", "0.5"])
    assert len(written) == 2 and all(p.stat().st_size > 10_000 for p in written)
    bev = next(p for p in written if p.name.startswith("masking_bev_"))
    assert colour_pixels(bev, viz.KEPT_COLOR) > 200 and colour_pixels(bev, viz.MASKED_COLOR) > 200
    with pytest.raises(ValueError, match="neither a frame id nor an index"):
        load_tool().main(["--cfg_file", str(DEMO_CFG), "--frame", "no_such_frame", "--out", str(tmp_path),
                          *data_set(tmp)])


def test_curves_from_real_run(short_run):
    _, run = short_run
    scalars = viz.read_scalars(run / "tensorboard")
    for tag in ("train/loss", "train/loss_rmae", "train/mask_ratio", "train/ts_cosine_similarity"):
        assert tag in scalars, sorted(scalars)
    assert any(t.startswith(viz.LR_PREFIX) for t in scalars)
    loss = scalars["train/loss"]
    assert loss.steps.tolist() == list(range(1, 9)) and np.isfinite(loss.values).all()
    titles = [title for title, _ in viz.curve_panels(scalars)]
    assert {"loss", "loss_rmae", "learning rate", "masked ratio"} <= set(titles)
    image = viz.figure_to_array(viz.training_curves_figure(scalars))
    assert image.ndim == 3 and image.shape[2] == 3 and image.std() > 5
    assert viz.similarity_figure(scalars) is not None


def test_tfevents_reader_round_trip(tmp_path):
    from tensorboardX import SummaryWriter

    writer = SummaryWriter(log_dir=str(tmp_path))
    values = np.random.default_rng(0).normal(size=20)
    for step, value in enumerate(values):
        writer.add_scalar("train/loss", float(value), step)
    writer.add_scalar("train/loss", 123.0, 3)  # a step written again (resume): the later value wins
    writer.close()
    path = next(tmp_path.glob(viz.EVENT_GLOB))
    with open(path, "ab") as handle:
        handle.write(b"\x10\x00\x00")  # truncated tail of a run still writing
    series = viz.read_scalars(tmp_path)["train/loss"]
    expected = values.astype(np.float32).astype(np.float64)
    expected[3] = 123.0
    assert series.steps.tolist() == list(range(20))
    np.testing.assert_allclose(series.values, expected)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        viz.read_scalars(tmp_path / "missing")


@pytest.mark.parametrize("seed", [0, 1])
def test_bev_labels_match_loop_reference(seed):
    rng = np.random.default_rng(seed)
    coords = rng.integers(0, [4, 30, 50], size=(400, 3))
    keep = rng.random(400) < 0.3
    for max_pixels, factor in ((100, 1), (20, 3)):
        labels = viz.bev_labels(coords, keep, (50, 30), max_pixels)
        ref = np.zeros((-(-30 // factor), -(-50 // factor)), dtype=np.int8)
        for (_, y, x), k in zip(coords, keep):
            cell = (y // factor, x // factor)
            ref[cell] = max(ref[cell], 2 if k else 1)
        np.testing.assert_array_equal(labels, ref)


def test_confusion_bev_counts():
    target = torch.zeros(2, 3, 4)
    logits = torch.full((2, 3, 4), -5.0)
    target[1, 0, 0] = 1.0
    logits[0, 0, 0] = 5.0          # TP at (0, 0) (max over z)
    logits[1, 2, 3] = 5.0          # FP at (2, 3)
    target[0, 1, 1] = 1.0          # FN at (1, 1)
    conf = viz.confusion_bev(logits, target)
    assert [int(conf[k].sum()) for k in ("tp", "fp", "fn")] == [1, 1, 1]
    assert conf["tp"][0, 0] and conf["fp"][2, 3] and conf["fn"][1, 1]


def random_mask(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    xy = torch.randint(0, 400, (3000, 2), generator=gen)
    coords = torch.cat([torch.zeros(3000, 1, dtype=torch.long), torch.randint(0, 40, (3000, 1), generator=gen),
                        xy], 1).int()
    masker = RadialMasker(MaskingConfig(masked_ratio=0.6), VOXEL, PCR, seed=seed)
    return coords, masker(coords, 1)


def test_masking_figure_reports_the_achieved_ratio():
    coords, mask = random_mask()
    sm = viz.sample_mask(coords, mask, 0)
    ratios = viz.achieved_ratios(sm, VOXEL, PCR, 10.0, 30.0)
    assert ratios["all"] == pytest.approx(float((~mask.keep).float().mean()))
    fig = viz.masking_bev_figure(sm, VOXEL, PCR, 10.0, 30.0, "t")
    assert f"masked {ratios['all']:.1%}" in fig.axes[0].get_title()
    with pytest.raises(ValueError, match="no voxels"):
        viz.sample_mask(coords, mask, 1)


class FakeWriter:
    def __init__(self):
        self.images = []

    def add_image(self, tag, image, step, dataformats):
        self.images.append((tag, image, step, dataformats))


class FakeBackbone:
    voxel_size, point_cloud_range = VOXEL, PCR
    masker = RadialMasker(MaskingConfig(masked_ratio=0.6), VOXEL, PCR, seed=0)

    def __init__(self):
        coords, mask = random_mask()
        self.forward_ret_dict = {"coords": coords, "mask": mask}


def test_trainer_hook_logs_mask_image_every_vis_interval():
    trainer = Trainer.__new__(Trainer)
    trainer.tb, trainer.model = FakeWriter(), torch.nn.Module()
    trainer.model.backbone_3d = FakeBackbone()
    trainer.loop = LoopConfig(total_epochs=4, grad_norm_clip=10.0, ckpt_dir=Path("."), vis_interval=2)
    for epoch in (1, 2, 3, 4):
        trainer._log_mask_image(TrainState(epoch=epoch, it=epoch * 10))
    assert [(tag, step, fmt) for tag, _, step, fmt in trainer.tb.images] == [("masking/bev", 20, "HWC"),
                                                                             ("masking/bev", 40, "HWC")]
    image = trainer.tb.images[0][1]
    assert image.dtype == np.uint8 and image.shape[2] == 3
    trainer.tb.images.clear()
    trainer.loop = LoopConfig(total_epochs=4, grad_norm_clip=10.0, ckpt_dir=Path("."))  # default: off
    trainer._log_mask_image(TrainState(epoch=2, it=20))
    assert trainer.tb.images == []

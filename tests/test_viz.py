"""Pictures: the visualisation tool on the built-in dataset, curves from a real run's event
files (read with tensorboard), the BEV raster and confusion maps against references, the engine hook."""
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
from pcdet_rmae_ts.occupancy import occupancy_metrics

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


def test_tool_voxelises_on_the_device_like_training(short_run, tmp_path):
    """VOXELIZE_ON_DEVICE configs (the shipped ISARC pretraining ones) carry points only; the tool
    voxelises them with the engine's BatchVoxelizer and gets the loader's voxels."""
    tmp, _ = short_run
    tool = load_tool()
    on_device = [*data_set(tmp), "DATA_CONFIG.VOXELIZE_ON_DEVICE", "True"]
    written = tool.main(["--cfg_file", str(DEMO_CFG), "--frame", "1", "--out", str(tmp_path), *on_device])
    assert sorted(p.name for p in written) == ["masking_bev_000001.png", "occupancy_000001.png"]
    voxels = {}
    for flag in ("False", "True"):
        args = tool.build_arg_parser().parse_args(["--cfg_file", str(DEMO_CFG), "--out", str(tmp_path),
                                                   *data_set(tmp), "DATA_CONFIG.VOXELIZE_ON_DEVICE", flag])
        dataset, batch, _ = tool.load_frame(tool.load_config(args), "1")
        assert dataset.voxelize_on_device == (flag == "True") and ("voxel_coords" in batch) == (flag == "False")
        inputs = tool.model_inputs(batch, dataset, torch.device("cpu"))
        order = np.lexsort(inputs["voxel_coords"].numpy().T[::-1])
        voxels[flag] = (inputs["voxel_coords"].numpy()[order], inputs["voxel_num_points"].numpy()[order])
    np.testing.assert_array_equal(voxels["True"][0], voxels["False"][0])
    np.testing.assert_array_equal(voxels["True"][1], voxels["False"][1])


def needs_tensorboard():
    pytest.importorskip("tensorboard", reason="training curves are read with tensorboard's event reader: "
                                              "pip install '.[viz]' (CI installs it with '.[dev]')")


def test_curves_from_real_run(short_run):
    needs_tensorboard()
    _, run = short_run
    scalars = viz.read_scalars(run / "tensorboard")
    for tag in ("train/loss", "train/loss_rmae", "train/mask_ratio", "train/mask_sector_fraction",
                "train/ts_cosine_similarity"):
        assert tag in scalars, sorted(scalars)
    assert any(t.startswith(viz.LR_PREFIX) for t in scalars)
    loss = scalars["train/loss"]
    assert loss.steps.tolist() == list(range(1, 9)) and np.isfinite(loss.values).all()
    titles = [title for title, _ in viz.curve_panels(scalars)]
    assert {"loss", "loss_rmae", "learning rate", "masked voxel ratio (batch)",
            "selected sectors / non-empty sectors", "occupancy precision / recall, masked sectors"} <= set(titles)
    image = viz.figure_to_array(viz.training_curves_figure(scalars))
    assert image.ndim == 3 and image.shape[2] == 3 and image.std() > 5
    assert viz.similarity_figure(scalars) is not None


def test_tfevents_reader_round_trip(tmp_path):
    needs_tensorboard()
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


def test_reading_curves_without_tensorboard_says_what_to_install(tmp_path, monkeypatch):
    (tmp_path / "events.out.tfevents.1.host").write_bytes(b"")
    monkeypatch.setitem(sys.modules, "tensorboard.backend.event_processing.event_accumulator", None)
    with pytest.raises(ImportError, match=r"pip install 'pcdet_rmae_ts\[viz\]'"):
        viz.read_scalars(tmp_path)


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


def test_confusion_columns_count_voxels_and_precision_is_trainings():
    """One column of 4 true voxels and one column with a single false z-level: per voxel (as training's
    occ_precision) precision is 4/5, where a max-over-z BEV would say 1/2; the false column is faint."""
    target = torch.zeros(4, 3, 5)
    logits = torch.full((4, 3, 5), -5.0)
    target[:, 0, 0] = 1.0
    logits[:, 0, 0] = 5.0           # 4 TP voxels in column (0, 0)
    logits[2, 2, 3] = 5.0           # 1 FP voxel in column (2, 3)
    target[1, 1, 1] = target[3, 1, 1] = 1.0  # 2 FN voxels in column (1, 1)
    conf = viz.confusion_columns(logits, target)
    assert (int(conf["tp"][0, 0]), int(conf["fp"][2, 3]), int(conf["fn"][1, 1])) == (4, 1, 2)
    assert [int(conf[k].sum()) for k in ("tp", "fp", "fn")] == [4, 1, 2]
    precision, recall = viz.voxel_precision_recall(logits, target, np.ones((3, 5), dtype=bool))
    assert (precision, recall) == pytest.approx((4 / 5, 4 / 6))
    image = viz.column_confusion_image(conf, num_z=4)
    np.testing.assert_array_equal(image[0, 0], viz._rgb(viz.TP_COLOR))
    np.testing.assert_array_equal(image[0, 1], [255, 255, 255])
    fp_shade = (255 - image[2, 3].astype(float)) / (255 - viz._rgb(viz.FP_COLOR).astype(float) + 1e-9)
    assert np.all(fp_shade[viz._rgb(viz.FP_COLOR) < 255] < 0.5), image[2, 3]  # faint, not red
    outside = np.ones((4, 3, 5), dtype=bool)
    outside[:, 2, 3] = False        # the FP column outside the valid region: precision 1
    assert viz.voxel_precision_recall(logits, target, outside)[0] == pytest.approx(1.0)
    assert int(viz.confusion_columns(logits, target, outside)["fp"].sum()) == 0


def test_occupancy_figure_reports_trainings_per_voxel_metric():
    gen = torch.Generator().manual_seed(3)
    target = (torch.rand(5, 20, 30, generator=gen) < 0.2).float()
    logits = torch.randn(5, 20, 30, generator=gen) + 2.0 * target
    masked = np.zeros((20, 30), dtype=bool)
    masked[:, :12] = True
    metrics = occupancy_metrics(logits, target, torch.ones(5, 20, 30, dtype=torch.bool))
    fig = viz.occupancy_figure(logits, target, masked, (0, 30, 0, 20), None, "t")
    title = fig.axes[0].get_title()
    assert f"all P {float(metrics['occ_precision']):.2f} R {float(metrics['occ_recall']):.2f}" in title


def test_curve_panels_keep_every_metric_group_apart():
    steps = np.arange(5)
    tags = ["train/loss", "train/mask_ratio", "train/mask_ratio_sample_mean", "train/mask_ratio_sample_min",
            "train/mask_ratio_near", "train/mask_ratio_mid", "train/mask_ratio_far", "train/mask_sector_fraction",
            "train/mask_sector_fraction_min", "train/occ_precision", "train/occ_recall",
            "train/occ_masked_precision", "train/occ_masked_recall", "meta_data/learning_rate"]
    scalars = {t: viz.Series(steps, np.full(5, 0.5)) for t in tags}
    panels = dict(viz.curve_panels(scalars))
    assert panels["masked voxel ratio (batch)"] == ["train/mask_ratio"]
    assert panels["occupancy precision / recall, masked sectors"] == ["train/occ_masked_precision",
                                                                      "train/occ_masked_recall"]
    assert panels["occupancy precision / recall, all cells"] == ["train/occ_precision", "train/occ_recall"]
    assert panels["selected sectors / non-empty sectors"] == ["train/mask_sector_fraction",
                                                              "train/mask_sector_fraction_min"]
    shown = [t for group in panels.values() for t in group]
    assert sorted(shown) == sorted(tags) and len(shown) == len(set(shown))


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
    occupied = viz.occupied_sectors(sm, VOXEL, PCR)
    assert occupied.sum() == 36 and not sm.sector_selected[~occupied].any()
    assert f"masked {ratios['all']:.1%}" in fig.axes[0].get_title()
    assert f"{int(sm.sector_selected.sum())}/36 non-empty sectors selected" in fig.axes[0].get_title()
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


class FakeModel(torch.nn.Module):
    """The engine contract's masking_snapshot() (PretrainModel's) over a fake backbone."""

    def masking_snapshot(self):
        backbone = FakeBackbone()
        cfg = backbone.masker.config
        return dict(backbone.forward_ret_dict, voxel_size=VOXEL, point_cloud_range=PCR, near=cfg.near, far=cfg.far)


def test_trainer_hook_logs_mask_image_every_vis_interval():
    trainer = Trainer.__new__(Trainer)
    trainer.tb, trainer.model = FakeWriter(), FakeModel()
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

"""tools/export_pretrained.py: a clean OpenPCDet checkpoint with only the VoxelNeXt encoder."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pcdet_rmae_ts.config import cfg_from_yaml_file
from pcdet_rmae_ts.engine.checkpoint import checkpoint_state, save_checkpoint
from pcdet_rmae_ts.models.encoder import VoxelNeXtEncoder
from pcdet_rmae_ts.models.pretrain_model import PretrainModel

REPO = Path(__file__).resolve().parents[1]
TOOL = REPO / "tools" / "export_pretrained.py"


def _tool():
    spec = importlib.util.spec_from_file_location("export_pretrained", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _demo_model(teacher: str = "ema", grid=(400, 400, 40)):
    cfg = cfg_from_yaml_file(REPO / "cfgs" / "demo" / "rmae_cmae_demo_pretraining.yaml")
    cfg.MODEL.BACKBONE_3D.TEACHER_BACKBONE_TYPE = teacher
    model = PretrainModel(cfg.MODEL, 3, list(grid), [0.2, 0.2, 0.2], [-40.0, -40.0, -3.0, 40.0, 40.0, 5.0])
    return cfg, model


def _engine_checkpoint(tmp_path: Path, model, epoch=3, it=42) -> Path:
    """A checkpoint written by the pretraining engine's own writer (same as a demo run's)."""
    with torch.no_grad():
        for name, param in model.named_parameters():  # student and teacher differ, as after training
            if ".teacher." not in f".{name}":
                param.add_(torch.randn_like(param))
    model.global_step += it
    return save_checkpoint(checkpoint_state(model, epoch=epoch, it=it), tmp_path / "checkpoint_epoch_3.pth")


@pytest.mark.parametrize("weights", ["student", "teacher"])
def test_export_keys_are_exactly_the_voxelnext_encoder(tmp_path, weights):
    cfg, model = _demo_model("ema")
    ckpt = _engine_checkpoint(tmp_path, model)
    out = tmp_path / f"{weights}.pth"
    proc = subprocess.run([sys.executable, str(TOOL), "--ckpt", str(ckpt), "--weights", weights, "--out", str(out)],
                          capture_output=True, text=True, cwd=REPO, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "dropped" in proc.stdout and "backbone_3d.occupancy_decoder" in proc.stdout
    exported = torch.load(out, map_location="cpu", weights_only=True)
    assert set(exported) == {"model_state", "epoch", "it", "version"}
    assert exported["epoch"] == 3 and exported["it"] == 42
    bb = model.backbone_3d
    reference = VoxelNeXtEncoder(**bb.init_kwargs).state_dict()
    assert set(exported["model_state"]) == {f"backbone_3d.{k}" for k in reference}
    source = bb.teacher if weights == "teacher" else bb
    own = source.state_dict()
    for key, value in exported["model_state"].items():
        assert value.shape == reference[key[len("backbone_3d."):]].shape
        assert torch.equal(value, own[key[len("backbone_3d."):]])


def test_export_matches_openpcdet_reference_keys_and_shapes(tmp_path, reference_path):
    """With the ISARC config's encoder (defaults, 3 input channels) the keys and shapes are VoxelNeXt's."""
    cfg = cfg_from_yaml_file(REPO / "cfgs" / "custom_models" / "rmae_cmae_isarc_4class_pretraining_phase1.yaml")
    model = PretrainModel(cfg.MODEL, 3, [1408, 1408, 80], [0.1, 0.1, 0.1], [-70.4, -70.4, -3.0, 70.4, 70.4, 5.0])
    ckpt = save_checkpoint(checkpoint_state(model, epoch=1, it=1), tmp_path / "c.pth")
    tool = _tool()
    tool.export_pretrained(ckpt, tmp_path / "out.pth", "student")
    state = torch.load(tmp_path / "out.pth", weights_only=True)["model_state"]
    golden = json.loads(reference_path("voxelnext_backbone_state_dict.json").read_text())["state_dict"]
    golden = golden["input_channels=3"]
    assert {k[len("backbone_3d."):]: list(v.shape) for k, v in state.items()} == golden


def test_teacher_requested_but_absent_is_an_error(tmp_path):
    _, model = _demo_model("identical")
    ckpt = _engine_checkpoint(tmp_path, model)
    proc = subprocess.run([sys.executable, str(TOOL), "--ckpt", str(ckpt), "--weights", "teacher",
                           "--out", str(tmp_path / "t.pth")], capture_output=True, text=True, cwd=REPO, check=False)
    assert proc.returncode == 2
    assert "no EMA teacher" in proc.stderr and "--weights student" in proc.stderr
    assert not (tmp_path / "t.pth").exists()


def test_select_rejects_non_pretraining_state():
    tool = _tool()
    with pytest.raises(tool.ExportError, match="no VoxelNeXt encoder weights"):
        tool.select_encoder_weights({"dense_head.x.weight": torch.zeros(1)})
    with pytest.raises(tool.ExportError, match="student' or 'teacher"):
        tool.select_encoder_weights({"backbone_3d.conv1.0.conv1.weight": torch.zeros(1)}, "ema")


def test_missing_file_and_unsafe_pickle_messages(tmp_path):
    tool = _tool()
    with pytest.raises(tool.ExportError, match="does not exist"):
        tool.load_pretraining_checkpoint(tmp_path / "nope.pth")
    import numpy as np

    bad = tmp_path / "numpy.pth"
    torch.save({"model_state": {}, "lr": np.float64(0.1)}, bad)
    with pytest.raises(tool.ExportError, match="--trust_checkpoint"):
        tool.load_pretraining_checkpoint(bad)

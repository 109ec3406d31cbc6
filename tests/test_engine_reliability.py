"""Pretraining CLI and engine under misuse and failure: bad flags, --set placement and documented
keys, corrupt or unwritable checkpoints, Ctrl-C, concurrent runs, fatal errors in the log."""
from __future__ import annotations

from pathlib import Path

import pytest

from pcdet_rmae_ts.config import ConfigError, cfg_from_list, cfg_from_yaml_file
from pcdet_rmae_ts.engine import pretrain

REPO = Path(__file__).resolve().parents[1]
DEMO_CFG = REPO / "cfgs" / "demo" / "rmae_cmae_demo_pretraining.yaml"
PRETRAIN_CFG = REPO / "cfgs" / "custom_models" / "rmae_cmae_isarc_4class_pretraining_phase1.yaml"


# ---------------------------------------------------------------------------------------- flags
@pytest.mark.parametrize("flag", ["--epochs", "--batch_size", "--ckpt_save_interval"])
def test_zero_counts_are_refused(flag, capsys):
    with pytest.raises(SystemExit) as exit_info:
        pretrain.build_arg_parser().parse_args(["--cfg_file", str(DEMO_CFG), flag, "0"])
    assert exit_info.value.code == 2
    assert f"argument {flag}: must be >= 1, got 0" in capsys.readouterr().err


def test_amp_on_the_cpu_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        pretrain.setup_job(["--cfg_file", str(DEMO_CFG), "--device", "cpu", "--amp", "--output_dir", str(tmp_path)])
    assert exit_info.value.code == 2
    assert "--amp (mixed precision) needs a CUDA device" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())  # refused before any output folder is made


# ---------------------------------------------------------------------------------------- --set
def test_set_before_other_flags_ends_at_the_next_flag():
    args = pretrain.parse_args(
        ["--cfg_file", "x.yaml", "--set", "OPTIMIZATION.LR", "0.1", "--device", "cpu", "--set",
         "DATA_CONFIG.ON_BAD_SAMPLE", "skip", "--epochs", "3"])
    assert args.set_cfgs == ["OPTIMIZATION.LR", "0.1", "DATA_CONFIG.ON_BAD_SAMPLE", "skip"]
    assert args.device == "cpu" and args.epochs == 3
    args = pretrain.parse_args(["--cfg_file", "x.yaml", "--set", "DATA_CONFIG.POINT_CLOUD_RANGE",
                                "-40,-40,-3,40,40,5", "A.B", "--x"])
    assert args.set_cfgs == ["DATA_CONFIG.POINT_CLOUD_RANGE", "-40,-40,-3,40,40,5", "A.B", "--x"]
    args = pretrain.parse_args(["--cfg_file", "x.yaml", "--set", "A.B", "--device", "cpu"])
    assert args.set_cfgs == ["A.B"] and args.device == "cpu"  # odd list: cfg_from_list names the key


def test_set_before_device_reaches_the_device_flag(tmp_path):
    job = pretrain.setup_job(["--cfg_file", str(DEMO_CFG), "--set", "DATA_CONFIG.ON_BAD_SAMPLE", "skip",
                              "--device", "cpu", "--output_dir", str(tmp_path)])
    assert job.device.type == "cpu" and job.cfg.DATA_CONFIG.ON_BAD_SAMPLE == "skip"
    for handler in job.logger.handlers:
        handler.close()


DOCUMENTED = [
    ("DATA_CONFIG.VOXELIZE_ON_DEVICE", "True", True),
    ("DATA_CONFIG.ON_BAD_SAMPLE", "skip", "skip"),
    ("DATA_CONFIG.MAX_BAD_SAMPLE_RETRIES", "5", 5),
    ("DATA_CONFIG.SYNTHETIC.FRAMES", "12", 12),
    ("OPTIMIZATION.DIFFERENTIAL_LR", "True", True),
    ("OPTIMIZATION.BACKBONE_LR_RATIO", "0.2", 0.2),
    ("OPTIMIZATION.DENSE_HEAD_LR_RATIO", "3", 3.0),
    ("OPTIMIZATION.VIS_INTERVAL", "2", 2),
    ("MODEL.BACKBONE_3D.MASKING_SEED", "7", 7),
    ("MODEL.BACKBONE_3D.TEACHER_MOMENTUM", "0.99", 0.99),
]


@pytest.mark.parametrize("key, raw, expected", DOCUMENTED)
@pytest.mark.parametrize("cfg_file", [DEMO_CFG, PRETRAIN_CFG])
def test_every_documented_key_is_settable(cfg_file, key, raw, expected):
    cfg = cfg_from_yaml_file(cfg_file)
    cfg_from_list([key, raw], cfg)
    node = cfg
    for part in key.split("."):
        node = node[part]
    assert node == expected and type(node) is type(expected)


def test_documented_keys_keep_their_type_and_unknown_keys_are_still_refused():
    with pytest.raises(ConfigError, match="MAX_BAD_SAMPLE_RETRIES.*type mismatch"):
        cfg_from_list(["DATA_CONFIG.MAX_BAD_SAMPLE_RETRIES", "many"], cfg_from_yaml_file(DEMO_CFG))
    cfg = cfg_from_yaml_file(DEMO_CFG)
    with pytest.raises(ConfigError, match="'ON_BAD_SAMPLES' does not exist.*did you mean 'ON_BAD_SAMPLE'"):
        cfg_from_list(["DATA_CONFIG.ON_BAD_SAMPLES", "skip"], cfg)
    with pytest.raises(ConfigError, match="'NOT_A_KEY' does not exist"):
        cfg_from_list(["MODEL.BACKBONE_3D.NOT_A_KEY", "1"], cfg)

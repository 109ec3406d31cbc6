"""Tests for pcdet_rmae_ts.config: YAML loading, _BASE_CONFIG_, --set, warnings, loss weights."""
from __future__ import annotations

import logging
from pathlib import Path

import pytest
from easydict import EasyDict

from pcdet_rmae_ts.config import (
    PACKAGE_ROOT,
    ConfigError,
    cfg_from_list,
    cfg_from_yaml_file,
    exp_group_path,
    log_config_to_file,
    resolve_loss_config,
)

REPO = Path(__file__).resolve().parents[1]
SEED_CONFIGS = Path(__file__).resolve().parent / "data" / "seed-configs"  # the user's original configs
FINETUNE = "cfgs/custom_models/rmae_cmae_isarc_4class_finetune_phase1.yaml"
PRETRAIN = "cfgs/custom_models/rmae_cmae_isarc_4class_pretraining_phase1.yaml"
DATASET = "cfgs/dataset_configs/custom_dataset_isarc.yaml"
SHIPPED = (FINETUNE, PRETRAIN, DATASET)


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# ----------------------------------------------------------------------------- shipped configs
@pytest.mark.parametrize("rel", SHIPPED)
@pytest.mark.parametrize("where", ["repo", "tmp"])
def test_shipped_configs_load_from_any_cwd(rel, where, monkeypatch, tmp_path, caplog):
    monkeypatch.chdir(REPO if where == "repo" else tmp_path)
    path = rel if where == "repo" else REPO / rel
    with caplog.at_level(logging.WARNING):
        cfg = cfg_from_yaml_file(path)
    assert not [r for r in caplog.records if "duplicate key" in r.getMessage()]
    data = cfg if rel == DATASET else cfg.DATA_CONFIG
    assert data.DATASET == "CustomDataset"
    assert data.DATA_PATH == "data/isarc_train_3channel"
    assert data.POINT_CLOUD_RANGE == [-70.4, -70.4, -6, 70.4, 70.4, 10]
    assert cfg.TAG == Path(rel).stem
    assert cfg.EXP_GROUP_PATH == Path(rel).parent.name


def test_finetune_config_runs_in_stock_openpcdet():
    cfg = cfg_from_yaml_file(REPO / FINETUNE)
    head = cfg.MODEL.DENSE_HEAD
    channels = sum(head.SEPARATE_HEAD_CFG.HEAD_DICT[name].out_channels for name in head.SEPARATE_HEAD_CFG.HEAD_ORDER)
    assert len(head.LOSS_CONFIG.LOSS_WEIGHTS.code_weights) == channels == 8
    nms = head.POST_PROCESSING.NMS_CONFIG
    assert (nms.NMS_THRESH, nms.NMS_PRE_MAXSIZE, nms.NMS_POST_MAXSIZE) == (0.2, 4096, 500)
    assert "USE_IOU_TO_RECTIFY_SCORE" not in head.POST_PROCESSING
    assert "IOU_RECTIFIER" not in head.POST_PROCESSING
    assert cfg.EXPERIMENT.DESCRIPTION == "Teacher-Student pretrained backbone fine-tuning"
    assert cfg.EXPERIMENT.LR_WARMUP is True and cfg.OPTIMIZATION.LR_WARMUP is False
    assert cfg.OPTIMIZATION.DIFFERENTIAL_LR is True
    assert cfg.OPTIMIZATION.BACKBONE_LR_RATIO == 0.1 and cfg.OPTIMIZATION.DENSE_HEAD_LR_RATIO == 2.0
    # the base config was merged under DATA_CONFIG and the fine-tune augmentation replaced the base list
    assert cfg.DATA_CONFIG.CLASS_NAMES == cfg.CLASS_NAMES
    assert cfg.DATA_CONFIG.DATA_AUGMENTOR.AUG_CONFIG_LIST[0].LIMIT_WHOLE_SCENE is False
    assert cfg.MODEL.POST_PROCESSING.EVAL_METRIC == "kitti"


def test_dataset_config_has_no_dozer():
    cfg = cfg_from_yaml_file(REPO / DATASET)
    sampling = cfg.DATA_AUGMENTOR.AUG_CONFIG_LIST[0]
    assert sampling.NAME == "gt_sampling"
    for entries in (sampling.PREPARE.filter_by_min_points, sampling.SAMPLE_GROUPS):
        assert [e.split(":")[0] for e in entries] == cfg.CLASS_NAMES


def test_every_seed_key_is_kept():
    seed_dir = SEED_CONFIGS
    removed = {"USE_IOU_TO_RECTIFY_SCORE", "IOU_RECTIFIER"}

    def leaves(node, pre=""):
        out = set()
        for key, value in node.items():
            out |= leaves(value, f"{pre}{key}.") if isinstance(value, dict) else {f"{pre}{key}"}
        return out

    for name in ("rmae_cmae_isarc_4class_finetune_phase1.yaml", "rmae_cmae_isarc_4class_pretraining_phase1.yaml",
                 "custom_dataset_isarc.yaml"):
        seed = leaves(cfg_from_yaml_file(seed_dir / name))
        ours = leaves(cfg_from_yaml_file(PACKAGE_ROOT / "cfgs" / ("dataset_configs" if "dataset" in name
                                                                   else "custom_models") / name))
        missing = {k for k in seed - ours if k.split(".")[-1] not in removed and k not in ("TAG", "EXP_GROUP_PATH")}
        assert not missing, (name, missing)


# ----------------------------------------------------------------------------- merging and lookup
def test_base_config_merge_semantics(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _write(tmp_path / "conf/base/data.yaml", "A: 1\nLIST: [1, 2]\nNESTED: {X: 1, Y: 2}\n_BASE_CONFIG_: nowhere.yaml\n")
    cfg_file = _write(tmp_path / "conf/models/m.yaml",
                      "DATA:\n  _BASE_CONFIG_: base/data.yaml\n  LIST: [3]\n  NESTED: {Y: 5, Z: 6}\nTOP: x\n")
    cfg = cfg_from_yaml_file(cfg_file)
    assert isinstance(cfg, EasyDict)
    assert cfg.DATA.A == 1  # from the base
    assert cfg.DATA.LIST == [3]  # lists replace
    assert cfg.DATA.NESTED == {"X": 1, "Y": 5, "Z": 6}  # dicts merge recursively
    assert cfg.DATA._BASE_CONFIG_ == "base/data.yaml"  # kept, as in OpenPCDet
    assert cfg.TOP == "x" and cfg.TAG == "m"


def test_base_config_prefers_cwd(tmp_path, monkeypatch):
    _write(tmp_path / "cwd/base.yaml", "WHO: cwd\n")
    _write(tmp_path / "cfgdir/base.yaml", "WHO: beside\n")
    cfg_file = _write(tmp_path / "cfgdir/m.yaml", "D:\n  _BASE_CONFIG_: base.yaml\n")
    monkeypatch.chdir(tmp_path / "cwd")
    assert cfg_from_yaml_file(cfg_file).D.WHO == "cwd"
    monkeypatch.chdir(tmp_path)
    assert cfg_from_yaml_file(cfg_file).D.WHO == "beside"


def test_missing_base_config_lists_tried_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg_file = _write(tmp_path / "a/m.yaml", "D:\n  _BASE_CONFIG_: cfgs/none.yaml\n")
    with pytest.raises(ConfigError) as err:
        cfg_from_yaml_file(cfg_file)
    msg = str(err.value)
    assert "_BASE_CONFIG_" in msg and str(cfg_file) in msg
    assert str(tmp_path / "cfgs/none.yaml") in msg and str(PACKAGE_ROOT / "cfgs/none.yaml") in msg


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        cfg_from_yaml_file(tmp_path / "nope.yaml")
    bad = _write(tmp_path / "bad.yaml", "A: [1, 2\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        cfg_from_yaml_file(bad)


def test_duplicate_key_warning_names_file_key_and_line(tmp_path, caplog):
    cfg_file = _write(tmp_path / "dup.yaml", "A: 1\nEXPERIMENT:\n  X: 1\nB: 2\nEXPERIMENT:\n  X: 2\n")
    with caplog.at_level(logging.WARNING, logger="pcdet_rmae_ts.config"):
        cfg = cfg_from_yaml_file(cfg_file)
    assert cfg.EXPERIMENT.X == 2  # PyYAML's last-wins behaviour is kept
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(messages) == 1
    assert "EXPERIMENT" in messages[0] and str(cfg_file) in messages[0]
    assert "line 5" in messages[0] and "line 2" in messages[0]


def test_seed_finetune_config_warns_about_experiment(caplog):
    seed = SEED_CONFIGS / "rmae_cmae_isarc_4class_finetune_phase1.yaml"
    with caplog.at_level(logging.WARNING):
        cfg_from_yaml_file(seed)
    assert any("'EXPERIMENT'" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("path, expected", [
    ("cfgs/custom_models/x.yaml", "custom_models"),
    ("x.yaml", ""),
    ("/a/b/c.yaml", "a/b"),
    ("/abs/pkg/cfgs/custom_models/sub/x.yaml", "custom_models/sub"),
])
def test_exp_group_path(path, expected):
    assert exp_group_path(path) == expected


# ----------------------------------------------------------------------------- --set
def _cfg() -> EasyDict:
    return EasyDict({"DATA_CONFIG": {"DATA_PATH": "data/x", "SPLIT": {"train": "train", "test": "val"}},
                     "OPTIMIZATION": {"LR": 0.003, "NUM_EPOCHS": 50, "MOMS": [0.95, 0.85], "USE": False,
                                      "NAMES": ["a", "b"]}})


def test_cfg_from_list_sets_values():
    cfg = cfg_from_list(["DATA_CONFIG.DATA_PATH", "/data/isarc", "OPTIMIZATION.LR", "0.01",
                         "OPTIMIZATION.NUM_EPOCHS", "3", "OPTIMIZATION.MOMS", "0.9,0.8",
                         "OPTIMIZATION.USE", "True", "OPTIMIZATION.NAMES", "c,d",
                         "DATA_CONFIG.SPLIT", "train:t2,test:v2"], _cfg())
    assert cfg.DATA_CONFIG.DATA_PATH == "/data/isarc"
    assert cfg.OPTIMIZATION.LR == 0.01 and cfg.OPTIMIZATION.NUM_EPOCHS == 3
    assert cfg.OPTIMIZATION.MOMS == [0.9, 0.8]  # OpenPCDet would crash on this tuple
    assert cfg.OPTIMIZATION.USE is True and cfg.OPTIMIZATION.NAMES == ["c", "d"]
    assert cfg.DATA_CONFIG.SPLIT == {"train": "t2", "test": "v2"}


def test_cfg_from_list_accepts_int_for_float_and_bracketed_lists():
    cfg = cfg_from_list(["OPTIMIZATION.LR", "1", "OPTIMIZATION.MOMS", "[0.5, 0.4]"], _cfg())
    assert cfg.OPTIMIZATION.LR == 1.0 and isinstance(cfg.OPTIMIZATION.LR, float)
    assert cfg.OPTIMIZATION.MOMS == [0.5, 0.4]


def test_cfg_from_list_errors_name_the_key():
    with pytest.raises(ConfigError, match="OPTIMIZATION.LRR") as err:
        cfg_from_list(["OPTIMIZATION.LRR", "0.1"], _cfg())
    assert "did you mean 'LR'" in str(err.value)
    with pytest.raises(ConfigError, match="OPTIMISATION"):
        cfg_from_list(["OPTIMISATION.LR", "0.1"], _cfg())
    with pytest.raises(ConfigError, match="OPTIMIZATION.NUM_EPOCHS.*type mismatch"):
        cfg_from_list(["OPTIMIZATION.NUM_EPOCHS", "2.5"], _cfg())
    with pytest.raises(ConfigError, match="pairs"):
        cfg_from_list(["OPTIMIZATION.LR"], _cfg())


def test_set_data_path_on_shipped_config():
    cfg = cfg_from_yaml_file(REPO / FINETUNE)
    cfg_from_list(["DATA_CONFIG.DATA_PATH", "/mnt/isarc_train_3channel"], cfg)
    assert cfg.DATA_CONFIG.DATA_PATH == "/mnt/isarc_train_3channel"


def test_log_config_to_file(caplog):
    log = logging.getLogger("test_config_log")
    with caplog.at_level(logging.INFO, logger="test_config_log"):
        log_config_to_file(_cfg(), log)
    lines = [r.getMessage() for r in caplog.records]
    assert "cfg.OPTIMIZATION.LR: 0.003" in lines and "cfg.DATA_CONFIG.SPLIT.test: val" in lines


# ----------------------------------------------------------------------------- loss weights
def test_loss_config_defaults():
    assert resolve_loss_config(EasyDict()) == {"RMAE_WEIGHT": 1.0, "TEACHER_STUDENT_WEIGHT": 0.0,
                                               "DETECTION_WEIGHT": 1.0}


def test_loss_config_most_specific_wins_key_by_key(caplog):
    cfg = EasyDict({
        "LOSS_CONFIG": {"RMAE_WEIGHT": 0.5, "TEACHER_STUDENT_WEIGHT": 0.1, "EXTRA": 3},
        "MODEL": {"LOSS_CONFIG": {"TEACHER_STUDENT_WEIGHT": 0.2, "DETECTION_WEIGHT": 2.0},
                  "BACKBONE_3D": {"LOSS_CONFIG": {"TEACHER_STUDENT_WEIGHT": 0.6}}},
    })
    with caplog.at_level(logging.WARNING, logger="pcdet_rmae_ts.config"):
        weights = resolve_loss_config(cfg)
    assert weights == {"RMAE_WEIGHT": 0.5, "TEACHER_STUDENT_WEIGHT": 0.6, "DETECTION_WEIGHT": 2.0, "EXTRA": 3}
    warnings = [r.getMessage() for r in caplog.records if "TEACHER_STUDENT_WEIGHT" in r.getMessage()]
    assert len(warnings) == 2 and "MODEL.BACKBONE_3D.LOSS_CONFIG" in warnings[-1]


def test_loss_config_same_value_twice_does_not_warn(caplog):
    cfg = EasyDict({"LOSS_CONFIG": {"RMAE_WEIGHT": 0.5}, "MODEL": {"LOSS_CONFIG": {"RMAE_WEIGHT": 0.5}}})
    with caplog.at_level(logging.WARNING, logger="pcdet_rmae_ts.config"):
        assert resolve_loss_config(cfg)["RMAE_WEIGHT"] == 0.5
    assert not caplog.records


def test_loss_config_rejects_bad_weight():
    with pytest.raises(ConfigError, match="MODEL.LOSS_CONFIG.RMAE_WEIGHT"):
        resolve_loss_config(EasyDict({"MODEL": {"LOSS_CONFIG": {"RMAE_WEIGHT": "high"}}}))


def test_loss_config_of_shipped_configs():
    assert resolve_loss_config(cfg_from_yaml_file(REPO / PRETRAIN)) == {
        "RMAE_WEIGHT": 1.0, "TEACHER_STUDENT_WEIGHT": 0.0, "DETECTION_WEIGHT": 1.0}
    assert resolve_loss_config(cfg_from_yaml_file(REPO / FINETUNE))["RMAE_WEIGHT"] == 0.0


# ----------------------------------------------------------------------------- one parser per section
def test_section_parsers_take_their_defaults_from_the_dataclass():
    """An empty section gives exactly the dataclass defaults (written once, in the dataclass)."""
    from pcdet_rmae_ts.losses import PHASE2_SECTIONS, phase2_configs
    from pcdet_rmae_ts.masking import MaskingConfig, masking_config_from_cfg
    from pcdet_rmae_ts.models.backbone import TeacherConfig
    from pcdet_rmae_ts.occupancy import OccupancyConfig, occupancy_config_from_cfg

    assert masking_config_from_cfg(EasyDict()) == MaskingConfig()
    assert occupancy_config_from_cfg(None) == OccupancyConfig() == occupancy_config_from_cfg({})
    assert TeacherConfig.from_cfg(EasyDict()) == TeacherConfig()
    configs = phase2_configs({}, {})
    assert all(configs[s] == cls() for s, (_, cls, _) in PHASE2_SECTIONS.items())


def test_dataclass_from_section_reads_keys_converts_and_refuses_unknown_ones():
    import dataclasses

    from pcdet_rmae_ts.config import dataclass_from_section, section_keys

    @dataclasses.dataclass(frozen=True)
    class Section:
        size: int = 3
        scales: tuple = ("a",)
        ratio: float = dataclasses.field(default=0.5, metadata={"key": "THE_RATIO"})
        derived: float = dataclasses.field(default=1.0, metadata={"derived": True})

    assert section_keys(Section) == ("SIZE", "SCALES", "THE_RATIO")
    got = dataclass_from_section(Section, {"SIZE": "7", "SCALES": ["b", "c"], "THE_RATIO": 1}, key_path="X",
                                 derived=2.0)
    assert got == Section(size=7, scales=("b", "c"), ratio=1.0, derived=2.0) and isinstance(got.ratio, float)
    with pytest.raises(ConfigError, match=r"X\.RATIO.*did you mean 'THE_RATIO'"):
        dataclass_from_section(Section, {"RATIO": 1}, key_path="X")
    assert dataclass_from_section(Section, {"OTHER": 1}, key_path="X", check_unknown=False) == Section()


def test_occupancy_decoder_unknown_key_names_the_nearest():
    from pcdet_rmae_ts.occupancy import occupancy_config_from_cfg

    with pytest.raises(ConfigError, match=r"OCCUPANCY_DECODER\.STRIDES.*did you mean 'STRIDE'"):
        occupancy_config_from_cfg({"STRIDES": 4})

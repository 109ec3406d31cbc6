"""Config pre-flight check: the seed configs' known problems are found (file, key, fix); ours pass."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from pcdet_rmae_ts.integration.preflight import check_config, failed, format_findings

REPO = Path(__file__).resolve().parents[1]
SEEDS = Path(__file__).resolve().parent / "data" / "seed-configs"  # the user's original files, unchanged
FINETUNE = "rmae_cmae_isarc_4class_finetune_phase1.yaml"
PRETRAIN = "rmae_cmae_isarc_4class_pretraining_phase1.yaml"
DATASET = "custom_dataset_isarc.yaml"


@pytest.fixture()
def seed_tree(tmp_path, monkeypatch):
    """The user's original files laid out as in their OpenPCDet tools/ folder, as the cwd."""
    (tmp_path / "cfgs" / "custom_models").mkdir(parents=True)
    (tmp_path / "cfgs" / "dataset_configs").mkdir(parents=True)
    for name in (FINETUNE, PRETRAIN):
        shutil.copy(SEEDS / name, tmp_path / "cfgs" / "custom_models" / name)
    shutil.copy(SEEDS / DATASET, tmp_path / "cfgs" / "dataset_configs" / DATASET)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _by_key(findings):
    return {f.key: f for f in findings}


def test_seed_finetune_config_findings(seed_tree):
    findings = check_config(f"cfgs/custom_models/{FINETUNE}")
    keys = _by_key(findings)
    code = keys["MODEL.DENSE_HEAD.LOSS_CONFIG.LOSS_WEIGHTS.code_weights"]
    assert code.severity == "error" and "7 entries" in code.message and "= 8" in code.message
    assert "[1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]" in code.fix and code.file.endswith(FINETUNE)
    for name, first in (("NMS_THRESH", "0.2"), ("NMS_PRE_MAXSIZE", "4096"), ("NMS_POST_MAXSIZE", "500")):
        nms = keys[f"MODEL.DENSE_HEAD.POST_PROCESSING.NMS_CONFIG.{name}"]
        assert nms.severity == "error" and "class-agnostic" in nms.message and f"{name}: {first}" in nms.fix
    for name in ("USE_IOU_TO_RECTIFY_SCORE", "IOU_RECTIFIER"):
        ignored = keys[f"MODEL.DENSE_HEAD.POST_PROCESSING.{name}"]
        assert ignored.severity == "warning" and "CenterHead" in ignored.message and f"remove {name}" == ignored.fix
    dup = keys["EXPERIMENT"]
    assert dup.severity == "warning" and "defined twice" in dup.message
    dozer = [f for f in findings if "dozer" in f.message]
    assert {f.key for f in dozer} == {"DATA_AUGMENTOR.AUG_CONFIG_LIST[0].PREPARE.filter_by_min_points",
                                      "DATA_AUGMENTOR.AUG_CONFIG_LIST[0].SAMPLE_GROUPS"}
    assert all(f.file.endswith(DATASET) and f.severity == "warning" and "remove 'dozer" in f.fix for f in dozer)
    assert keys["DATA_PATH"].file.endswith(DATASET) and "--set DATA_CONFIG.DATA_PATH" in keys["DATA_PATH"].fix
    assert failed(findings)
    text = format_findings(FINETUNE, findings)
    assert "4 error(s)" in text and "fix:" in text


def test_seed_pretraining_config_has_no_errors_but_reports_the_dataset_file(seed_tree):
    findings = check_config(f"cfgs/custom_models/{PRETRAIN}")
    assert not failed(findings)
    assert failed(findings, strict=True)
    assert any("dozer" in f.message and f.file.endswith(DATASET) for f in findings)


def test_seed_dataset_config_alone(seed_tree):
    findings = check_config(f"cfgs/dataset_configs/{DATASET}")
    assert sum("dozer" in f.message for f in findings) == 2


@pytest.mark.parametrize("cfg", [f"cfgs/custom_models/{FINETUNE}", f"cfgs/custom_models/{PRETRAIN}",
                                 f"cfgs/dataset_configs/{DATASET}", "cfgs/demo/rmae_cmae_demo_pretraining.yaml"])
def test_shipped_configs_pass_clean(cfg, monkeypatch):
    monkeypatch.chdir(REPO)
    findings = check_config(cfg)
    assert not failed(findings, strict=True), format_findings(cfg, findings)


def test_check_config_cli_exit_status(seed_tree):
    tool = REPO / "tools" / "check_config.py"
    bad = subprocess.run([sys.executable, str(tool), f"cfgs/custom_models/{FINETUNE}"], capture_output=True,
                         text=True, check=False)
    assert bad.returncode == 1
    assert "ERROR" in bad.stdout and "code_weights" in bad.stdout
    good = subprocess.run([sys.executable, str(tool), str(REPO / "cfgs" / "custom_models" / FINETUNE)],
                          capture_output=True, text=True, check=False, cwd=REPO)
    assert good.returncode == 0, good.stdout


def test_missing_base_config_is_an_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "x.yaml").write_text("DATA_CONFIG:\n  _BASE_CONFIG_: nowhere/base.yaml\n")
    findings = check_config("x.yaml")
    assert failed(findings) and "nowhere/base.yaml" in findings[0].message


def test_head_and_backbone_consistency(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "x.yaml").write_text(
        "CLASS_NAMES: [a, b]\nMODEL:\n  NAME: RMAECMAEDetectorPhase1\n"
        "  BACKBONE_3D: {NAME: RMAECMAEBackbonePhase1, PRETRAINING: False, OUT_CHANNEL: 64, MASKED_RATO: 0.1}\n"
        "  DENSE_HEAD: {NAME: VoxelNeXtHead, CLASS_NAMES_EACH_HEAD: [[a]]}\n")
    keys = _by_key(check_config("x.yaml"))
    assert "MASKED_RATIO" in keys["MODEL.BACKBONE_3D"].message
    assert keys["MODEL.DENSE_HEAD.CLASS_AGNOSTIC"].severity == "error"
    assert "must cover" in keys["MODEL.DENSE_HEAD.CLASS_NAMES_EACH_HEAD"].message
    assert keys["MODEL.DENSE_HEAD.SHARED_CONV_CHANNEL"].fix == "set SHARED_CONV_CHANNEL: 64"


# ---------------------------------------------------------------- the pretraining engine's own validation
def _pretraining_variant(tmp_path, edit) -> str:
    """The shipped pretraining config with ``edit(cfg)`` applied, written to ``tmp_path``."""
    cfg = yaml.safe_load((REPO / "cfgs" / "custom_models" / PRETRAIN).read_text())
    cfg["DATA_CONFIG"]["_BASE_CONFIG_"] = str(REPO / "cfgs" / "dataset_configs" / DATASET)
    edit(cfg)
    path = tmp_path / "variant.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def _enable_gt_sampling(cfg):
    augmentor = cfg["DATA_CONFIG"]["DATA_AUGMENTOR"]
    augmentor["DISABLE_AUG_LIST"] = []
    augmentor["AUG_CONFIG_LIST"].insert(0, {"NAME": "gt_sampling", "DB_INFO_PATH": ["custom_dbinfos_train.pkl"],
                                            "SAMPLE_GROUPS": ["dumptruck:15"]})


def _typo_augmentor(cfg):
    cfg["DATA_CONFIG"]["DATA_AUGMENTOR"]["AUG_CONFIG_LIST"][1]["NAME"] = "random_world_scalling"


ENGINE_CASES = {
    "masked_ratio": (lambda cfg: cfg["MODEL"]["BACKBONE_3D"].update(MASKED_RATIO=1.5),
                     "MODEL.BACKBONE_3D.MASKED_RATIO", "MASKED_RATIO must be in [0, 1), got 1.5"),
    "gt_sampling": (_enable_gt_sampling, "DATA_CONFIG.DATA_AUGMENTOR.AUG_CONFIG_LIST[0]",
                    "needs ground-truth boxes"),
    "augmentor_typo": (_typo_augmentor, "DATA_CONFIG.DATA_AUGMENTOR.AUG_CONFIG_LIST[1]",
                       "did you mean 'random_world_scaling'?"),
    "inverted_range": (lambda cfg: cfg["DATA_CONFIG"].update(POINT_CLOUD_RANGE=[70.4, 70.4, 10, -70.4, -70.4, -6]),
                       "DATA_CONFIG.POINT_CLOUD_RANGE", "min must be below max on each axis, but not on x, y, z"),
}


@pytest.mark.parametrize("case", sorted(ENGINE_CASES))
def test_pretraining_config_rejected_by_the_engine_is_an_error(tmp_path, case):
    edit, key, text = ENGINE_CASES[case]
    findings = check_config(_pretraining_variant(tmp_path, edit))
    engine = [f for f in findings if "pretraining engine" in f.message]
    assert len(engine) == 1, format_findings(case, findings)
    assert engine[0].severity == "error" and engine[0].key == key and text in engine[0].message
    assert failed(findings)
    assert "(file:" not in engine[0].message  # the finding names the file itself


def test_engine_crash_is_an_error_with_what_the_data_pipeline_computed(tmp_path, monkeypatch):
    """A constructor that crashes instead of validating still stops the check, with the grid it was given."""
    from pcdet_rmae_ts.models import pretrain_model

    def crash(cfg, dataset):
        raise RuntimeError("Trying to create tensor with negative dimension -9")
    monkeypatch.setattr(pretrain_model.PretrainModel, "from_config", staticmethod(crash))
    findings = check_config(_pretraining_variant(tmp_path, lambda cfg: None))
    engine = [f for f in findings if "pretraining engine" in f.message]
    assert len(engine) == 1 and engine[0].severity == "error" and engine[0].key == "MODEL.BACKBONE_3D"
    assert "crashes on this config (RuntimeError)" in engine[0].message
    assert "grid_size [1408, 1408, 80]" in engine[0].fix and "[-70.4, -70.4, -6, 70.4, 70.4, 10]" in engine[0].fix


def test_engine_rejection_found_by_the_cli(tmp_path):
    cfg = _pretraining_variant(tmp_path, ENGINE_CASES["masked_ratio"][0])
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "check_config.py"), cfg], capture_output=True,
                          text=True, check=False)
    assert proc.returncode == 1 and "1 error(s)" in proc.stdout and "MASKED_RATIO" in proc.stdout


def test_engine_check_leaves_the_torch_rng_alone(monkeypatch):
    monkeypatch.chdir(REPO)
    torch.manual_seed(123)
    expected = torch.rand(4)
    torch.manual_seed(123)
    assert not failed(check_config(f"cfgs/custom_models/{PRETRAIN}"))
    assert torch.equal(torch.rand(4), expected)


# ---------------------------------------------------------------- POST_CENTER_LIMIT_RANGE vs POINT_CLOUD_RANGE
POST_KEY = "MODEL.DENSE_HEAD.POST_PROCESSING.POST_CENTER_LIMIT_RANGE"


def test_seed_finetune_post_center_range_is_a_warning(seed_tree):
    finding = _by_key(check_config(f"cfgs/custom_models/{FINETUNE}"))[POST_KEY]
    assert finding.severity == "warning"
    assert "[-51.2, -51.2, -5, 51.2, 51.2, 3]" in finding.message
    assert "[-70.4, -70.4, -6, 70.4, 70.4, 10]" in finding.message and "in x, y, z" in finding.message
    assert finding.fix.startswith("set POST_CENTER_LIMIT_RANGE: [-70.4, -70.4, -6, 70.4, 70.4, 10]")


def test_shipped_finetune_covers_the_point_cloud_range(monkeypatch):
    monkeypatch.chdir(REPO)
    findings = check_config(f"cfgs/custom_models/{FINETUNE}")
    assert POST_KEY not in _by_key(findings)


@pytest.mark.parametrize("limit, axes", [([-80, -80, -6, 80, 80, 10], None), ([-40, -40, -6, 40, 40, 10], None),
                                         ([-30, -30, -6, 30, 30, 10], "x, y"), ([-40, -39.5, -6, 39.5, 40, 10], "x, y"),
                                         ([-40, -40, -6, 40, 40, 4], "z")])
def test_post_center_range_against_point_cloud_range(tmp_path, monkeypatch, limit, axes):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "x.yaml").write_text(yaml.safe_dump({
        "CLASS_NAMES": ["a"], "DATA_CONFIG": {"POINT_CLOUD_RANGE": [-40, -40, -6, 40, 40, 10]},
        "MODEL": {"DENSE_HEAD": {"NAME": "VoxelNeXtHead", "CLASS_AGNOSTIC": False, "CLASS_NAMES_EACH_HEAD": [["a"]],
                                 "POST_PROCESSING": {"POST_CENTER_LIMIT_RANGE": limit}}}}))
    finding = _by_key(check_config("x.yaml")).get(POST_KEY)
    if axes is None:
        assert finding is None
    else:
        assert finding.severity == "warning" and f"in {axes}:" in finding.message

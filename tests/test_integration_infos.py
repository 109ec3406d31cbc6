"""tools/create_infos.py without pcdet: config resolution, the info format and counts, the error without
pcdet. The full run (OpenPCDet's CustomDataset and points-in-boxes op) is in benchmarks/e2e/run_flow.sh."""
from __future__ import annotations

import importlib.util
import pickle
from pathlib import Path

import numpy as np
import pytest

from pcdet_rmae_ts.config import ConfigError
from pcdet_rmae_ts.integration import infos

REPO = Path(__file__).resolve().parents[1]
FINETUNE = REPO / "cfgs" / "custom_models" / "rmae_cmae_isarc_4class_finetune_phase1.yaml"
DATASET = REPO / "cfgs" / "dataset_configs" / "custom_dataset_isarc.yaml"


def _write_frames(root: Path, labels: dict, split="train"):
    (root / "labels").mkdir(parents=True)
    (root / "points").mkdir()
    (root / "ImageSets").mkdir()
    for frame_id, lines in labels.items():
        (root / "labels" / f"{frame_id}.txt").write_text("".join(f"{line}\n" for line in lines))
        np.save(root / "points" / f"{frame_id}.npy", np.random.default_rng(0).normal(size=(50, 3)).astype(np.float32))
    (root / "ImageSets" / f"{split}.txt").write_text("\n".join(labels) + "\n")


@pytest.mark.parametrize("cfg_file", [FINETUNE, DATASET])
def test_dataset_config_from_a_model_or_a_dataset_config(cfg_file, tmp_path):
    data_cfg = infos.load_dataset_config(str(cfg_file), ["DATA_CONFIG.DATA_PATH" if cfg_file == FINETUNE
                                                         else "DATA_PATH", str(tmp_path)])
    assert data_cfg.DATA_PATH == str(tmp_path)
    assert list(data_cfg.CLASS_NAMES) == ["dumptruck", "excavator", "grader", "roller"]
    assert infos._db_info_file(data_cfg, tmp_path) == tmp_path / "custom_dbinfos_train.pkl"


def test_split_infos_have_openpcdets_format_and_honest_counts(tmp_path):
    _write_frames(tmp_path, {
        "000000": ["1 2 0 8 3 3 0.1 excavator", "10 2 0 5 2 3 0 roller"],
        "000001": [],  # no objects: OpenPCDet's reader would crash on it
        "000002": ["-5 4 0.5 9 3.5 4 1.2 dumptruck", "3 3 0 4 2 2 0 dozer"],
    })
    result, summary = infos.build_split_infos(tmp_path, "train", 3,
                                              ["dumptruck", "excavator", "grader", "roller"], tmp_path / "i.pkl")
    assert [info["point_cloud"] for info in result] == [
        {"num_features": 3, "lidar_idx": frame_id} for frame_id in ("000000", "000001", "000002")]
    assert result[1]["annos"]["gt_boxes_lidar"].shape == (0, 7)
    np.testing.assert_allclose(result[2]["annos"]["gt_boxes_lidar"][0], [-5, 4, 0.5, 9, 3.5, 4, 1.2])
    assert list(result[2]["annos"]["name"]) == ["dumptruck", "dozer"]
    assert summary.frames == 3 and summary.boxes == {"excavator": 1, "roller": 1, "dumptruck": 1}
    assert summary.other_boxes == {"dozer": 1}
    text = summary.describe()
    assert "3 frames" in text and "dozer 1" in text and "not in CLASS_NAMES" in text
    pickle.loads(pickle.dumps(result))  # what the tool writes must pickle


def test_missing_split_and_wrong_columns_are_clear(tmp_path):
    _write_frames(tmp_path, {"000000": ["1 2 0 8 3 3 0.1 excavator"]})
    with pytest.raises(FileNotFoundError, match="val.txt"):
        infos._read_ids(tmp_path, "val")
    (tmp_path / "labels" / "000000.txt").write_text("1 2 0 8 3 excavator\n")
    with pytest.raises(ValueError, match="000000.txt:1"):
        infos._read_label(tmp_path, "000000")
    with pytest.raises(FileNotFoundError, match="000009.txt"):
        infos._read_label(tmp_path, "000009")
    with pytest.raises(ConfigError, match="src_feature_list"):
        infos._check_columns(tmp_path, "000000", 4)
    infos._check_columns(tmp_path, "000000", 3)


@pytest.mark.skipif(importlib.util.find_spec("pcdet") is not None, reason="pcdet is installed here")
def test_without_pcdet_the_tool_says_how_to_get_it(tmp_path):
    from pcdet_rmae_ts.integration.pcdet import PcdetNotAvailable

    _write_frames(tmp_path, {"000000": ["1 2 0 8 3 3 0.1 excavator"]})
    with pytest.raises(PcdetNotAvailable, match="OpenPCDet"):
        infos.create_infos(infos.load_dataset_config(str(FINETUNE), ["DATA_CONFIG.DATA_PATH", str(tmp_path)]))

"""Pretraining CLI and engine under misuse and failure: bad flags, --set placement and documented
keys, corrupt or unwritable checkpoints, Ctrl-C, concurrent runs, fatal errors in the log."""
from __future__ import annotations

import errno
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from pcdet_rmae_ts.config import ConfigError, cfg_from_list, cfg_from_yaml_file
from pcdet_rmae_ts.engine import pretrain
from pcdet_rmae_ts.engine.checkpoint import (
    LATEST_NAME,
    CheckpointError,
    CorruptCheckpointError,
    check_resume_shapes,
    load_checkpoint,
    load_newest_checkpoint,
    load_weights_report,
    save_checkpoint,
)
from pcdet_rmae_ts.engine.logging_utils import FX_LOGGER, create_logger, log_to_files
from pcdet_rmae_ts.engine.run_lock import LOCK_NAME, RunLock, RunLockedError

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


# ---------------------------------------------------------------------------------------- checkpoints
def _state(seed: int) -> dict:
    torch.manual_seed(seed)
    return {"model_state": {"w": torch.randn(64, 64)}, "epoch": seed, "it": 10 * seed}


def _write(path: Path, state: dict, mtime: float) -> None:
    save_checkpoint(state, path)
    os.utime(path, (mtime, mtime))


@pytest.mark.parametrize("damage", ["truncated", "empty", "garbage"])
def test_auto_resume_falls_back_to_the_newest_checkpoint_that_loads(tmp_path, caplog, damage):
    now = time.time()
    _write(tmp_path / "checkpoint_epoch_1.pth", _state(1), now - 30)
    _write(tmp_path / "checkpoint_epoch_2.pth", _state(2), now - 20)
    _write(tmp_path / LATEST_NAME, _state(3), now - 10)
    latest = tmp_path / LATEST_NAME
    raw = latest.read_bytes()
    latest.write_bytes({"truncated": raw[:len(raw) // 2], "empty": b"", "garbage": os.urandom(len(raw))}[damage])
    os.utime(latest, (now, now))
    with caplog.at_level(logging.WARNING):
        path, state = load_newest_checkpoint(tmp_path, logging.getLogger("test"))
    assert path == tmp_path / "checkpoint_epoch_2.pth" and state["epoch"] == 2
    assert not latest.exists() and (tmp_path / (LATEST_NAME + ".corrupt")).exists()
    warning = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warning) == 1 and "truncated or corrupt" in warning[0] and "--trust_checkpoint" not in warning[0]
    assert "latest_model.pth.corrupt" in warning[0]


def test_auto_resume_with_only_corrupt_files_starts_fresh(tmp_path, caplog):
    (tmp_path / "checkpoint_epoch_1.pth").write_bytes(b"PK\x03\x04 cut")
    with caplog.at_level(logging.WARNING):
        assert load_newest_checkpoint(tmp_path, logging.getLogger("test")) == (None, None)
    assert (tmp_path / "checkpoint_epoch_1.pth.corrupt").exists()


def test_untrusted_pickle_is_not_called_corrupt(tmp_path):
    path = tmp_path / "checkpoint_epoch_1.pth"
    torch.save({"model_state": {}, "lr": np.float64(0.1)}, path)
    with pytest.raises(CheckpointError, match="--trust_checkpoint") as info:
        load_newest_checkpoint(tmp_path, logging.getLogger("test"))
    assert not isinstance(info.value, CorruptCheckpointError) and path.exists()


def _disk_full_after(nbytes: int):
    def save(obj, f, *args, **kwargs):
        with open(f, "wb") as handle:
            handle.write(b"\0" * nbytes)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return save


def test_disk_full_while_saving_gives_one_error_and_leaves_nothing(tmp_path, monkeypatch):
    good = save_checkpoint(_state(1), tmp_path / "checkpoint_epoch_1.pth")
    before = good.read_bytes()
    save_checkpoint(_state(1), tmp_path / LATEST_NAME)
    monkeypatch.setattr(torch, "save", _disk_full_after(1000))
    for name in ("checkpoint_epoch_2.pth", LATEST_NAME):
        with pytest.raises(CheckpointError) as info:
            save_checkpoint(_state(2), tmp_path / name)
        message = str(info.value)
        assert str(tmp_path / name) in message and "No space left on device" in message
        assert "\n" not in message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint_epoch_1.pth", LATEST_NAME]
    assert good.read_bytes() == before
    assert load_checkpoint(tmp_path / LATEST_NAME)["epoch"] == 1  # the older latest survives


def test_torch_write_failure_and_unwritable_folder_are_one_error(tmp_path, monkeypatch):
    def save(obj, f, *args, **kwargs):
        Path(f).write_bytes(b"partial")
        raise RuntimeError("[enforce fail at inline_container.cc:603] . unexpected pos 4096 vs 4032\nframe #0 ...")
    monkeypatch.setattr(torch, "save", save)
    with pytest.raises(CheckpointError, match="unexpected pos 4096 vs 4032") as info:
        save_checkpoint(_state(1), tmp_path / "a.pth")
    assert "frame #0" not in str(info.value) and not list(tmp_path.iterdir())
    monkeypatch.undo()
    (tmp_path / "not_a_dir").write_text("")
    with pytest.raises(CheckpointError, match=r"not_a_dir/ckpt/a\.pth"):
        save_checkpoint(_state(1), tmp_path / "not_a_dir" / "ckpt" / "a.pth")


def _tiny_model():
    model = torch.nn.Module()
    model.backbone_3d = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 2))
    return model


def test_pretrained_shape_mismatch_is_a_warning_with_counts_and_cause(caplog):
    model = _tiny_model()
    state = {k: torch.zeros(v.shape) for k, v in model.state_dict().items()}
    state["backbone_3d.0.weight"] = torch.zeros(8, 5)  # other input features
    state["backbone_3d.1.weight"] = torch.zeros(3, 8)
    with caplog.at_level(logging.DEBUG):
        report = load_weights_report(model, state, logging.getLogger("test"))
    assert len(report["shape_mismatched"]) == 2
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "2 matched, 0 missing, 0 unexpected, 2 shape-mismatched" in warnings[0]
    assert "Likely cause" in warnings[0] and "backbone_3d.0.weight: (8, 5) vs (8, 4)" in warnings[0]
    assert not [r for r in caplog.records if r.levelno == logging.INFO and "mismatched:" in r.getMessage()]


def test_pretrained_without_mismatch_stays_info(caplog):
    model = _tiny_model()
    with caplog.at_level(logging.INFO):
        load_weights_report(model, {"backbone_3d.0.bias": torch.ones(8), "teacher.x": torch.ones(1)},
                            logging.getLogger("test"))
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_resume_with_other_shapes_is_one_clear_error(tmp_path):
    model = _tiny_model()
    state = {k: torch.zeros(v.shape) for k, v in model.state_dict().items()}
    for key in list(state)[:3]:
        state[key] = torch.zeros(7)
    with pytest.raises(CheckpointError) as info:
        check_resume_shapes(model, state, tmp_path / "c.pth")
    message = str(info.value)
    assert "3 of 4 weights" in message and "Likely cause" in message and "\n" not in message
    check_resume_shapes(model, {k: torch.zeros(v.shape) for k, v in model.state_dict().items()}, tmp_path / "c.pth")


# ---------------------------------------------------------------------------------------- run lock
def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    proc.kill()
    proc.wait()
    return proc.pid


def test_second_run_in_a_folder_is_refused_and_stale_lock_taken_over(tmp_path):
    first = RunLock(tmp_path).acquire()
    owner = json.loads((tmp_path / LOCK_NAME).read_text())
    assert owner["pid"] == os.getpid() and owner["host"] == socket.gethostname()
    with pytest.raises(RunLockedError, match=f"PID {os.getpid()} on host {socket.gethostname()}.*--extra_tag"):
        RunLock(tmp_path).acquire()
    first.release()
    assert not (tmp_path / LOCK_NAME).exists()
    (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": _dead_pid(), "host": socket.gethostname(),
                                                  "started": "2020-01-01 00:00:00"}))
    taken = RunLock(tmp_path).acquire()
    assert taken.stale_owner["started"] == "2020-01-01 00:00:00"
    assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()
    taken.release()


def test_lock_of_another_host_is_not_taken_over(tmp_path):
    (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": _dead_pid(), "host": "elsewhere"}))
    with pytest.raises(RunLockedError, match=f"on host elsewhere.*delete {tmp_path / LOCK_NAME}"):
        RunLock(tmp_path).acquire()


# ---------------------------------------------------------------------------------------- logging
def test_fatal_line_goes_to_the_log_file_only(tmp_path, capsys):
    logger = create_logger(tmp_path / "log_train_x.txt", 0, name="pcdet_rmae_ts_test_fatal")
    log_to_files("ERROR (ConfigError): something", name="pcdet_rmae_ts_test_fatal")
    for handler in logger.handlers:
        handler.close()
    assert "ERROR  ERROR (ConfigError): something" in (tmp_path / "log_train_x.txt").read_text()
    assert "something" not in capsys.readouterr().err


def test_fx_tracing_notice_is_dropped_and_other_fx_records_kept():
    import torch.fx._symbolic_trace as fx_trace

    records = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())

    fx_logger = logging.getLogger(FX_LOGGER)
    handler = Keep()
    fx_logger.addHandler(handler)
    try:
        create_logger(None, 0, name="pcdet_rmae_ts_test_fx")
        fx_trace.is_fx_tracing_warning.__wrapped__()  # the call torch makes (lru_cached) on the first use
        fx_logger.warning("another fx warning")
    finally:
        fx_logger.removeHandler(handler)
    assert records == ["another fx warning"]


# ---------------------------------------------------------------------------------------- end to end
CLI = REPO / "tools" / "train_rmae_cmae_phase1.py"


def _cli(tmp: Path, *extra: str, tag: str = "default", frames: int = 6) -> list:
    return [sys.executable, str(CLI), "--cfg_file", str(DEMO_CFG), "--output_dir", str(tmp / "output"),
            "--fix_random_seed", "--extra_tag", tag, *extra,
            "--set", "DATA_CONFIG.DATA_PATH", str(tmp / "demo"), "DATA_CONFIG.SYNTHETIC.FRAMES", str(frames),
            "OPTIMIZATION.BATCH_SIZE_PER_GPU", "2"]


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def _root(tmp: Path, tag: str = "default") -> Path:
    return tmp / "output" / "demo" / "rmae_cmae_demo_pretraining" / tag


def _wait_for(path: Path, text: str, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if path.exists() and text in path.read_text(errors="replace"):
            return
        time.sleep(0.2)
    raise AssertionError(f"{text!r} did not appear in {path} (rc {proc.poll()}): {path.read_text()[-2000:]}")


def test_ctrl_c_saves_and_resumes_and_a_second_run_is_refused(tmp_path):
    """Ctrl-C (SIGINT to the process group, as a terminal sends it) mid-epoch with a loader worker;
    a second run in the same folder meanwhile; then the same command resumes and finishes."""
    args = _cli(tmp_path, "--epochs", "6", "--workers", "1", "--ckpt_save_time_interval", "100000", frames=12)
    err_a = tmp_path / "a.err"
    with open(err_a, "w") as stderr:
        first = subprocess.Popen(args, env=_env(), stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True)
    try:
        _wait_for(err_a, "epoch 1/6  iteration 1/", first)
        second = subprocess.run(args, env=_env(), capture_output=True, text=True, timeout=300)
        assert second.returncode == 2
        assert f"Another run (PID {first.pid} on host {socket.gethostname()}" in second.stderr
        assert len(second.stderr.strip().splitlines()) == 1, second.stderr
        assert first.poll() is None, "the first run ended before it could be interrupted"
        os.killpg(first.pid, signal.SIGINT)
        assert first.wait(timeout=300) == 130
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
    stderr_a = err_a.read_text()
    last = stderr_a.strip().splitlines()[-1]
    assert last.startswith("Interrupted (Ctrl-C) in epoch "), stderr_a[-3000:]
    assert "Traceback" not in stderr_a and "is_fx_tracing" not in stderr_a
    training = stderr_a[stderr_a.index("Start training"):]
    assert "\x1b[" not in training and "\r" not in training  # no tqdm bars in a redirected log
    root = _root(tmp_path)
    saved = load_checkpoint(root / "ckpt" / LATEST_NAME)
    iters = 5  # 10 training frames of 12, batches of 2
    assert saved["it"] == saved["epoch"] * iters + saved["skip_batches"] >= 1
    assert f"after iteration {saved['it']}; saved {root / 'ckpt' / LATEST_NAME}" in last
    assert not (root / LOCK_NAME).exists()
    assert last in next(root.glob("log_train_*.txt")).read_text()

    resumed = subprocess.run(args, env=_env(), capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"Resuming from {root / 'ckpt' / LATEST_NAME}" in resumed.stderr
    if saved["skip_batches"]:
        assert f"skipping its first {saved['skip_batches']} batches" in resumed.stderr
    final = load_checkpoint(root / "ckpt" / "checkpoint_epoch_6.pth")
    assert final["epoch"] == 6 and final["it"] == 6 * iters


def test_fatal_error_is_one_line_on_the_console_and_in_the_log_file(tmp_path):
    bad = tmp_path / "other_model.pth"
    torch.save({"model_state": {"backbone_3d.conv_input.0.weight": torch.zeros(3, 3, 3, 5, 16)}, "epoch": 1,
                "it": 1}, bad)
    result = subprocess.run(_cli(tmp_path, "--workers", "0", "--ckpt", str(bad), tag="mismatch"), env=_env(),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"ERROR (CheckpointError): Cannot resume from {bad}: 1 of 1 weights"), result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    log = next(_root(tmp_path, "mismatch").glob("log_train_*.txt")).read_text()
    assert log.rstrip().endswith(last)

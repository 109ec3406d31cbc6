"""The pretraining job end to end: checkpoints, weights_only loading, resume after kill -9, DDP."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from pcdet_rmae_ts.engine.checkpoint import load_checkpoint, load_weights_report
from pcdet_rmae_ts.models.encoder import VoxelNeXtEncoder

REPO = Path(__file__).resolve().parents[1]
CLI = REPO / "tools" / "train_rmae_cmae_phase1.py"
DEMO_CFG = REPO / "cfgs" / "demo" / "rmae_cmae_demo_pretraining.yaml"


def cli_args(tmp: Path, *extra: str) -> list:
    return [sys.executable, str(CLI), "--cfg_file", str(DEMO_CFG), "--workers", "0", "--output_dir",
            str(tmp / "output"), "--fix_random_seed", *extra,
            "--set", "DATA_CONFIG.DATA_PATH", str(tmp / "demo"), "DATA_CONFIG.SYNTHETIC.FRAMES", "10",
            "OPTIMIZATION.BATCH_SIZE_PER_GPU", "2"]


def run_dir(tmp: Path) -> Path:
    return tmp / "output" / "demo" / "rmae_cmae_demo_pretraining" / "default"


def env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("run")
    subprocess.run(cli_args(tmp, "--epochs", "2"), check=True, env=env(), capture_output=True, timeout=600)
    return tmp


def test_run_writes_openpcdet_layout(finished_run):
    root = run_dir(finished_run)
    assert sorted(p.name for p in (root / "ckpt").iterdir()) == ["checkpoint_epoch_1.pth", "checkpoint_epoch_2.pth"]
    assert list((root / "tensorboard").glob("events.out.tfevents.*"))
    log = next(root.glob("log_train_*.txt")).read_text()
    assert "cfg.MODEL.BACKBONE_3D.MASKED_RATIO" in log or "MASKED_RATIO" in log
    assert "epoch 2/2: mean loss" in log
    ckpt = load_checkpoint(root / "ckpt" / "checkpoint_epoch_2.pth")  # weights_only=True
    for key in ("model_state", "optimizer_state", "epoch", "it", "version", "scheduler_state", "rng_state",
                "masker_state"):
        assert key in ckpt, key
    assert ckpt["epoch"] == 2 and ckpt["it"] == 8
    assert int(ckpt["model_state"]["global_step"]) == 8


def test_checkpoint_holds_voxelnext_encoder_keys(finished_run):
    ckpt = load_checkpoint(run_dir(finished_run) / "ckpt" / "checkpoint_epoch_2.pth")
    encoder = VoxelNeXtEncoder(3, [400, 400, 40], channels=[16, 16, 32, 32, 32], out_channel=32)
    expected = {f"backbone_3d.{k}": v.shape for k, v in encoder.state_dict().items()}
    got = {k: v.shape for k, v in ckpt["model_state"].items() if k in expected}
    assert got == expected
    assert any(k.startswith("backbone_3d.teacher.") for k in ckpt["model_state"])  # EMA teacher saved


def test_pretrained_model_report(finished_run, caplog):
    ckpt = load_checkpoint(run_dir(finished_run) / "ckpt" / "checkpoint_epoch_2.pth")
    encoder = torch.nn.Module()
    encoder.backbone_3d = VoxelNeXtEncoder(3, [400, 400, 40], channels=[16, 16, 32, 32, 32], out_channel=32)
    state = dict(ckpt["model_state"])
    state["backbone_3d.conv_out.0.weight"] = torch.zeros(1)
    with caplog.at_level("INFO"):
        report = load_weights_report(encoder, state, __import__("logging").getLogger("test"))
    assert report["shape_mismatched"] == ["backbone_3d.conv_out.0.weight: (1,) vs (32, 3, 3, 32)"]
    assert report["missing"] == []
    assert "backbone_3d.conv1.0.conv1.weight" in report["matched"]
    assert any(k.startswith("backbone_3d.teacher.") for k in report["unexpected"])
    assert torch.equal(encoder.backbone_3d.conv1[0].conv1.weight,
                       ckpt["model_state"]["backbone_3d.conv1.0.conv1.weight"])


def test_untrusted_pickle_needs_a_flag(tmp_path):
    import numpy as np
    path = tmp_path / "old.pth"
    torch.save({"model_state": {}, "lr": np.float64(0.1)}, path)
    with pytest.raises(RuntimeError, match="--trust_checkpoint"):
        load_checkpoint(path)
    assert load_checkpoint(path, trust_pickle=True)["lr"] == 0.1


def test_kill_9_then_same_command_resumes_and_matches_an_uninterrupted_run(finished_run, tmp_path):
    args = cli_args(tmp_path, "--epochs", "2", "--ckpt_save_time_interval", "0")
    ckpt_dir = run_dir(tmp_path) / "ckpt"
    proc = subprocess.Popen(args, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    latest = ckpt_dir / "latest_model.pth"
    while time.time() < deadline and proc.poll() is None:
        if latest.exists() and torch.load(latest, weights_only=True)["it"] >= 5:
            break
        time.sleep(0.2)
    assert proc.poll() is None, "training ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (ckpt_dir / "checkpoint_epoch_2.pth").exists()
    resumed = subprocess.run(args, env=env(), capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Resuming from" in resumed.stderr
    final = load_checkpoint(ckpt_dir / "checkpoint_epoch_2.pth")
    reference = load_checkpoint(run_dir(finished_run) / "ckpt" / "checkpoint_epoch_2.pth")
    assert final["it"] == reference["it"] == 8
    for key, value in reference["model_state"].items():
        torch.testing.assert_close(final["model_state"][key], value, rtol=1e-5, atol=1e-6, msg=key)




def test_two_process_gloo_ddp_keeps_parameters_equal(tmp_path):
    """torchrun, 2 CPU processes, gloo: train a few steps, then compare parameter checksums across ranks."""
    script = tmp_path / "ddp_check.py"
    script.write_text(
        "import sys, torch, torch.distributed as dist\n"
        "from pcdet_rmae_ts.engine import pretrain\n"
        "captured = {}\n"
        "original = pretrain.Trainer.train\n"
        "def train(self, state):\n"
        "    out = original(self, state)\n"
        "    model = self.model.module\n"
        "    sums = torch.stack([p.detach().double().sum() for p in model.parameters()])\n"
        "    gathered = [torch.zeros_like(sums) for _ in range(dist.get_world_size())]\n"
        "    dist.all_gather(gathered, sums)\n"
        "    teacher = torch.stack([t.double().sum() for t in list(model.backbone_3d.teacher.parameters())\n"
        "                           + list(model.backbone_3d.teacher.buffers())])\n"
        "    tg = [torch.zeros_like(teacher) for _ in range(dist.get_world_size())]\n"
        "    dist.all_gather(tg, teacher)\n"
        "    if dist.get_rank() == 0:\n"
        "        assert torch.equal(gathered[0], gathered[1]), 'student parameters differ across ranks'\n"
        "        assert torch.equal(tg[0], tg[1]), 'EMA teachers differ across ranks'\n"
        "        print('DDP-PARAMS-EQUAL', float(sums.sum()), float(teacher.sum()))\n"
        "    return out\n"
        "pretrain.Trainer.train = train\n"
        "pretrain.run_pretraining()\n")
    args = cli_args(tmp_path, "--epochs", "1", "--launcher", "pytorch", "--device", "cpu")[2:]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
           str(script), *args]
    result = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "DDP-PARAMS-EQUAL" in result.stdout
    assert (run_dir(tmp_path) / "ckpt" / "checkpoint_epoch_1.pth").exists()


def test_default_workers_share_the_cpus_between_processes(monkeypatch):
    from pcdet_rmae_ts.engine import pretrain
    monkeypatch.setattr(pretrain.os, "cpu_count", lambda: 32)
    assert pretrain.default_workers(1) == 8  # capped
    assert pretrain.default_workers(8) == 4  # 32 CPUs over 8 GPU processes
    monkeypatch.setattr(pretrain.os, "cpu_count", lambda: 2)
    assert pretrain.default_workers(4) == 1  # never 0 (0 would load in the training process)
    assert pretrain.build_arg_parser().parse_args(["--cfg_file", "x.yaml"]).workers is None

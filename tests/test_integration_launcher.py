"""Launcher logic (no pcdet needed): finding OpenPCDet's tools/, argv handling, error messages."""
from __future__ import annotations

import importlib.util
import os
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from pcdet_rmae_ts.integration import pcdet as integ

REPO = Path(__file__).resolve().parents[1]
PCDET_PRESENT = importlib.util.find_spec("pcdet") is not None


def _fake_tools(root: Path) -> Path:
    tools = root / "OpenPCDet" / "tools"
    (tools / "train_utils" / "optimization").mkdir(parents=True)
    (tools / "train_utils" / "optimization" / "__init__.py").write_text("")
    (tools / "train.py").write_text("")
    (tools / "test.py").write_text("")
    return tools


def test_import_does_not_import_pcdet():
    code = ("import sys, pcdet_rmae_ts, pcdet_rmae_ts.models, pcdet_rmae_ts.models.detector, "
            "pcdet_rmae_ts.integration.pcdet, pcdet_rmae_ts.integration.preflight; "
            "assert 'pcdet' not in sys.modules, sorted(m for m in sys.modules if m.startswith('pcdet.'))")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


def test_tools_dir_from_flag_env_and_errors(tmp_path, monkeypatch):
    tools = _fake_tools(tmp_path)
    assert integ.find_pcdet_tools(str(tools), environ={}) == tools.resolve()
    assert integ.find_pcdet_tools(None, environ={"PCDET_TOOLS": str(tools)}) == tools.resolve()
    with pytest.raises(integ.LauncherError, match="--pcdet_tools points to .* not a directory"):
        integ.find_pcdet_tools(str(tmp_path / "nope"), environ={})
    (tools / "train.py").unlink()
    with pytest.raises(integ.LauncherError, match="PCDET_TOOLS environment variable .* train.py is missing"):
        integ.find_pcdet_tools(None, environ={"PCDET_TOOLS": str(tools)})


def test_tools_dir_next_to_pcdet(tmp_path, monkeypatch):
    tools = _fake_tools(tmp_path)
    (tools.parent / "pcdet").mkdir()
    (tools.parent / "pcdet" / "__init__.py").write_text("")
    spec = importlib.util.spec_from_file_location("pcdet", tools.parent / "pcdet" / "__init__.py")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: spec if name == "pcdet" else None)
    assert integ.find_pcdet_tools(None, environ={}) == tools.resolve()
    site = tmp_path / "site-packages" / "pcdet"
    site.mkdir(parents=True)
    (site / "__init__.py").write_text("")
    spec2 = importlib.util.spec_from_file_location("pcdet", site / "__init__.py")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: spec2 if name == "pcdet" else None)
    with pytest.raises(integ.LauncherError, match="not an editable/source install.*--pcdet_tools"):
        integ.find_pcdet_tools(None, environ={})
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(integ.LauncherError, match="pcdet is not installed.*PCDET_TOOLS"):
        integ.find_pcdet_tools(None, environ={})


def test_split_launcher_args_keeps_set_remainder():
    ours, rest = integ.split_launcher_args(
        ["--cfg_file", "a.yaml", "--pcdet_tools", "/x", "--skip_preflight", "--batch_size", "8",
         "--set", "OPTIMIZATION.LR", "0.01", "--pcdet_tools", "literal"])
    assert ours.pcdet_tools == "/x" and ours.skip_preflight and not ours.chdir_tools
    assert rest == ["--cfg_file", "a.yaml", "--batch_size", "8", "--set", "OPTIMIZATION.LR", "0.01",
                    "--pcdet_tools", "literal"]
    assert ours.seed is None


def test_seed_flag_is_taken_out_and_makes_runs_repeatable():
    import torch

    from pcdet_rmae_ts.seeding import seed_everything

    ours, rest = integ.split_launcher_args(["--seed", "7", "--cfg_file", "a.yaml", "--fix_random_seed"])
    assert ours.seed == 7 and rest == ["--cfg_file", "a.yaml", "--fix_random_seed"]
    draws = []
    for seed in (7, 7, 8):
        seed_everything(seed)
        draws.append((torch.rand(3), np.random.rand(), random.random()))
    assert torch.equal(draws[0][0], draws[1][0]) and draws[0][1:] == draws[1][1:]
    assert not torch.equal(draws[0][0], draws[2][0]) and draws[0][1] != draws[2][1] and draws[0][2] != draws[2][2]


@pytest.mark.parametrize("argv, env, expected", [
    (["--launcher", "pytorch", "--cfg_file", "a"], {"LOCAL_RANK": "3"},
     ["--launcher", "pytorch", "--cfg_file", "a", "--local_rank", "3"]),
    (["--launcher", "pytorch", "--set", "A", "1"], {"LOCAL_RANK": "1"},
     ["--launcher", "pytorch", "--local_rank", "1", "--set", "A", "1"]),
    (["--launcher", "pytorch", "--local-rank=2"], {"LOCAL_RANK": "2"}, ["--launcher", "pytorch", "--local_rank", "2"]),
    (["--launcher", "pytorch", "--local_rank", "0"], {"LOCAL_RANK": "5"},
     ["--launcher", "pytorch", "--local_rank", "0"]),
    (["--cfg_file", "a"], {"LOCAL_RANK": "1"}, ["--cfg_file", "a"]),
])
def test_translate_local_rank(argv, env, expected):
    assert integ.translate_local_rank(argv, env) == expected


def _launch(args, cwd, env_extra=None):
    env = dict(os.environ, **(env_extra or {}))
    env.pop("PCDET_TOOLS", None)
    env.update(env_extra or {})
    return subprocess.run([sys.executable, str(REPO / "tools" / "train.py")] + args, capture_output=True, text=True,
                          cwd=cwd, env=env, check=False)


def test_launcher_reports_missing_tools_dir(tmp_path):
    proc = _launch(["--pcdet_tools", str(tmp_path / "missing"), "--cfg_file", "x.yaml"], tmp_path)
    assert proc.returncode == 2
    assert "pcdet_rmae_ts: error: --pcdet_tools points to" in proc.stderr and "Traceback" not in proc.stderr


def test_launcher_stops_on_preflight_errors(tmp_path):
    tools = _fake_tools(tmp_path)
    seeds = REPO / "tests" / "data" / "seed-configs"  # the user's original configs
    cfg = tmp_path / "cfgs" / "custom_models"
    cfg.mkdir(parents=True)
    (tmp_path / "cfgs" / "dataset_configs").mkdir()
    (cfg / "ft.yaml").write_text((seeds / "rmae_cmae_isarc_4class_finetune_phase1.yaml").read_text())
    (tmp_path / "cfgs" / "dataset_configs" / "custom_dataset_isarc.yaml").write_text(
        (seeds / "custom_dataset_isarc.yaml").read_text())
    proc = _launch(["--pcdet_tools", str(tools), "--cfg_file", "cfgs/custom_models/ft.yaml"], tmp_path)
    assert proc.returncode == 2
    assert "code_weights" in proc.stderr and "--skip_preflight" in proc.stderr


@pytest.mark.skipif(PCDET_PRESENT, reason="pcdet is installed here; this checks the message when it is absent")
def test_launcher_says_pcdet_is_missing(tmp_path):
    tools = _fake_tools(tmp_path)
    proc = _launch(["--pcdet_tools", str(tools), "--cfg_file",
                    str(REPO / "cfgs" / "custom_models" / "rmae_cmae_isarc_4class_finetune_phase1.yaml")], REPO)
    assert proc.returncode == 2
    assert "OpenPCDet (the 'pcdet' package) is not importable" in proc.stderr


@pytest.mark.skipif(PCDET_PRESENT, reason="pcdet is installed here")
def test_register_without_pcdet_is_a_clear_error():
    import pcdet_rmae_ts

    with pytest.raises(ImportError, match="setup.py develop"):
        pcdet_rmae_ts.register()


@pytest.mark.parametrize("name, target", [("dist_train.sh", "tools/train.py"), ("dist_test.sh", "tools/test.py"),
                                          ("dist_pretrain.sh", "tools/train_rmae_cmae_phase1.py")])
def test_dist_scripts_run_torchrun_with_the_launcher(tmp_path, name, target):
    """The scripts exec `$PYTHON -m torch.distributed.run ... <tool> --launcher pytorch <args>`; a stand-in
    interpreter that prints its arguments shows the exact command line."""
    fake = tmp_path / "python"
    fake.write_text('#!/usr/bin/env bash\necho "$@"\n')
    fake.chmod(0o755)
    env = {**os.environ, "PYTHON": str(fake), "MASTER_PORT": "29999", "NNODES": "2", "NODE_RANK": "1"}
    out = subprocess.run(["bash", str(REPO / "scripts" / name), "3", "--cfg_file", "x.yaml", "--batch_size", "2"],
                         env=env, capture_output=True, text=True, check=True).stdout.split()
    assert out[:2] == ["-m", "torch.distributed.run"]
    assert {"--nproc_per_node=3", "--nnodes=2", "--node_rank=1", "--master_port=29999"} <= set(out)
    i = out.index(str(REPO / target))
    assert out[i + 1:] == ["--launcher", "pytorch", "--cfg_file", "x.yaml", "--batch_size", "2"]


def test_dist_scripts_need_the_gpu_count():
    result = subprocess.run(["bash", str(REPO / "scripts" / "dist_train.sh")], capture_output=True, text=True)
    assert result.returncode != 0 and "NUM_GPUS" in result.stderr


def test_tool_flags_end_where_set_values_begin():
    argv = ["--cfg_file", "a.yaml", "--merge_all_iters_to_one_epoch", "--set", "X.Y", "--merge_all_iters_to_one_epoch"]
    assert integ._tool_flags(argv) == argv[:3]
    assert "--merge_all_iters_to_one_epoch" not in integ._tool_flags(
        ["--epochs", "2", "--set", "A", "--merge_all_iters_to_one_epoch"])
    assert integ._tool_flags(["--epochs", "2"]) == ["--epochs", "2"]


def test_numpy_scalars_in_openpcdet_checkpoints_load_and_other_pickles_stay_refused(tmp_path):
    """OpenPCDet's one-cycle schedule puts numpy.float64 LRs and momenta into the optimizer state; its
    load_params_from_file calls torch.load with the default weights_only=True (torch >= 2.6). Run in a fresh
    process: the allow-list is global, and the engine's tests rely on numpy scalars being refused."""
    code = textwrap.dedent("""
        import argparse, sys
        import numpy as np, torch
        from pcdet_rmae_ts.integration.pcdet import allow_numpy_scalars_in_checkpoints
        ckpt, other = sys.argv[1], sys.argv[2]
        state = {"param_groups": [{"lr": np.float64(0.003), "betas": (np.float64(0.95), 0.99)}]}
        torch.save({"optimizer_state": state, "it": np.int64(400), "loss": np.float32(4.5)}, ckpt)
        torch.save({"odd": argparse.Namespace(a=1)}, other)
        try:
            torch.load(ckpt)
            refused_before = False
        except Exception:
            refused_before = True
        names = allow_numpy_scalars_in_checkpoints()
        loaded = torch.load(ckpt)
        group = loaded["optimizer_state"]["param_groups"][0]
        assert group["lr"] == np.float64(0.003) and group["betas"][0] == np.float64(0.95), loaded
        assert loaded["it"] == 400 and loaded["loss"] == np.float32(4.5), loaded
        try:
            torch.load(other)
            print("OTHER_LOADED")
        except Exception:
            pass
        print("REFUSED_BEFORE" if refused_before else "LOADED_BEFORE", names)
        """)
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "ckpt.pth"), str(tmp_path / "other.pth")],
                         capture_output=True, text=True, cwd=REPO, check=True).stdout
    assert "OTHER_LOADED" not in out  # only numpy scalars and dtypes are allowed
    torch_version = tuple(int(x) for x in __import__("torch").__version__.split(".")[:2])
    if torch_version >= (2, 6):  # weights_only became the default there
        assert "REFUSED_BEFORE" in out and "numpy.dtype" in out

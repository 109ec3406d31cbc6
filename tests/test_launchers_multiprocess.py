"""The dist_*.sh launchers on the CPU with 2 and 4 gloo processes: ranks and arguments reach the tool.

The OpenPCDet runs use stand-ins built in ``tmp_path`` (pcdet is not installed here): a tools/ folder
(``train.py``, ``test.py``, ``train_utils/optimization``) and, next to it, the least ``pcdet`` package that
``run_pcdet_tool`` touches (version, ``models.backbones_3d`` / ``models.detectors`` registries with
VoxelNeXt, ``models.model_fn_decorator``, ``config``, ``datasets.custom.custom_dataset.CustomDataset``).
The pretraining run is the real engine on the demo config, shortened.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Dict, List, Optional

import pytest
import torch
import torch.distributed as dist

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "scripts"
DEMO_CFG = REPO / "cfgs" / "demo" / "rmae_cmae_demo_pretraining.yaml"
FINETUNE_CFG = REPO / "cfgs" / "custom_models" / "rmae_cmae_isarc_4class_finetune_phase1.yaml"
RUN_TIMEOUT_S = 300
SEED = 7


def _torchrun_unavailable() -> Optional[str]:
    """Why torchrun with gloo cannot run here, or None."""
    if not sys.platform.startswith("linux"):
        return "the launchers are bash scripts and the plugin's fork start method is Linux-only"
    if shutil.which("bash") is None:
        return "bash is not installed"
    if not (dist.is_available() and dist.is_gloo_available()):
        return "this torch build has no torch.distributed gloo backend"
    try:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
    except OSError as err:
        return f"cannot bind a local TCP port for torchrun's rendezvous ({err})"
    return None


_UNAVAILABLE = _torchrun_unavailable()
pytestmark = pytest.mark.skipif(_UNAVAILABLE is not None, reason=_UNAVAILABLE or "")

# ----------------------------------------------------------------------------- stand-in OpenPCDet
FAKE_PCDET = {
    "__init__.py": '__version__ = "0.6.0+standin"\n',
    "config.py": """
        import yaml
        from easydict import EasyDict

        cfg = EasyDict()


        def merge_new_config(config, new_config):
            # OpenPCDet's rule: a _BASE_CONFIG_ file first, then this level's keys (recursively)
            if "_BASE_CONFIG_" in new_config:
                with open(new_config["_BASE_CONFIG_"]) as f:
                    config.update(EasyDict(yaml.safe_load(f)))
            for key, value in new_config.items():
                if isinstance(value, dict):
                    merge_new_config(config.setdefault(key, EasyDict()), value)
                else:
                    config[key] = value
            return config


        def cfg_from_yaml_file(cfg_file, config):
            with open(cfg_file) as f:
                return merge_new_config(config, yaml.safe_load(f))
        """,
    "models/__init__.py": """
        def model_fn_decorator():
            def model_func(model, batch_dict):
                raise NotImplementedError("stand-in")
            return model_func
        """,
    "models/backbones_3d/__init__.py": "__all__ = {}\n",
    "models/detectors/__init__.py": 'from .voxelnext import VoxelNeXt\n\n__all__ = {"VoxelNeXt": VoxelNeXt}\n',
    "models/detectors/voxelnext.py": "import torch\n\n\nclass VoxelNeXt(torch.nn.Module):\n    pass\n",
    "datasets/__init__.py": "",
    "datasets/custom/__init__.py": "",
    "datasets/custom/custom_dataset.py": """
        class CustomDataset:
            def evaluation(self, det_annos, class_names, **kwargs):
                return "", {}
        """,
}

# OpenPCDet's tools/train.py and test.py flags that these runs use (same names, types and defaults);
# parse_args, not parse_known_args: a launcher flag that leaked through ends the run with status 2.
STANDIN_TOOL = """
    import argparse
    import json
    import os
    import sys
    from pathlib import Path

    import numpy as np
    import torch

    DRAW = torch.rand(1).item()  # the first draw after the launcher's --seed

    import torch.distributed as dist
    import torch.multiprocessing as mp

    import pcdet.models
    import pcdet.models.detectors
    from pcdet.config import cfg, cfg_from_yaml_file
    from pcdet_rmae_ts.integration.pcdet import HOOK_MARK

    SCRIPT = Path(__file__).name
    parser = argparse.ArgumentParser()
    parser.add_argument("--cfg_file", type=str, default=None)
    parser.add_argument("--batch_size", type=int, default=None)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--extra_tag", type=str, default="default")
    parser.add_argument("--launcher", choices=["none", "pytorch", "slurm"], default="none")
    parser.add_argument("--tcp_port", type=int, default=18888)
    parser.add_argument("--local_rank", type=int, default=None)
    parser.add_argument("--set", dest="set_cfgs", default=None, nargs=argparse.REMAINDER)
    if SCRIPT == "train.py":
        parser.add_argument("--epochs", type=int, default=None)
        parser.add_argument("--fix_random_seed", action="store_true", default=False)
        parser.add_argument("--merge_all_iters_to_one_epoch", action="store_true", default=False)
    else:
        parser.add_argument("--ckpt", type=str, default=None)
        parser.add_argument("--eval_all", action="store_true", default=False)
    args = parser.parse_args()
    cfg_from_yaml_file(args.cfg_file, cfg)

    hooks = {"config_lookup": getattr(cfg_from_yaml_file, HOOK_MARK, False),
             "registered": "RMAECMAEDetectorPhase1" in pcdet.models.detectors.__all__,
             "tensorboard_lr": getattr(pcdet.models.model_fn_decorator, HOOK_MARK, False)}
    if SCRIPT == "train.py":
        from train_utils.optimization import build_optimizer, build_scheduler
        hooks["optimizer"] = getattr(build_optimizer, HOOK_MARK, False)
        hooks["merged_epochs"] = getattr(build_scheduler, "merged_epochs", None)
    # OpenPCDet's load_params_from_file: torch.load with the default weights_only, on a one-cycle checkpoint
    ckpt = Path(os.environ["STANDIN_OUT"]) / f"{SCRIPT}.{os.environ['LOCAL_RANK']}.pth"
    torch.save({"optimizer_state": {"param_groups": [{"lr": np.float64(0.003)}]}}, ckpt)
    hooks["numpy_checkpoint"] = bool(torch.load(ckpt)["optimizer_state"]["param_groups"][0]["lr"] == 0.003)

    dist.init_process_group("gloo")  # env:// from torchrun
    total = torch.tensor([dist.get_rank()])
    dist.all_reduce(total)
    record = {"rank": dist.get_rank(), "world_size": dist.get_world_size(), "rank_sum": int(total.item()),
              "env_local_rank": int(os.environ["LOCAL_RANK"]), "local_rank_arg": args.local_rank,
              "argv": sys.argv[1:], "set_cfgs": args.set_cfgs, "start_method": mp.get_start_method(allow_none=True),
              "draw": DRAW, "dataset": cfg.get("DATA_CONFIG", {}).get("DATASET"), "hooks": hooks}
    out = Path(os.environ["STANDIN_OUT"]) / f"{SCRIPT}.rank{record['rank']}.json"
    out.write_text(json.dumps(record))
    dist.barrier()
    dist.destroy_process_group()
    """


def _write_tree(root: Path, files: Dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip())


def _standin_openpcdet(root: Path) -> Path:
    """``root/OpenPCDet/{tools,pcdet}``; returns the tools folder."""
    checkout = root / "OpenPCDet"
    _write_tree(checkout / "pcdet", FAKE_PCDET)
    _write_tree(checkout / "tools", {
        "train.py": STANDIN_TOOL,
        "test.py": STANDIN_TOOL,
        "train_utils/__init__.py": "",
        "train_utils/optimization/__init__.py": """
            def build_optimizer(model, optim_cfg):
                raise NotImplementedError("stand-in")


            def build_scheduler(optimizer, total_iters_each_epoch, total_epochs, last_epoch, optim_cfg):
                raise NotImplementedError("stand-in")
            """,
    })
    return checkout / "tools"


def _launch_env(**extra: str) -> Dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("MASTER_PORT", "MASTER_ADDR", "NNODES", "NODE_RANK", "PCDET_TOOLS",
                        "PCDET_RMAE_TS_START_METHOD", "RANK", "LOCAL_RANK", "WORLD_SIZE")}
    env.update(PYTHON=sys.executable, OMP_NUM_THREADS="1", **extra)
    return env


def _run(script: str, nprocs: int, args: List[str], cwd: Path, env: Dict[str, str]) -> subprocess.CompletedProcess:
    result = subprocess.run(["bash", str(SCRIPTS / script), str(nprocs), *args], cwd=cwd, env=env,
                            capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    assert result.returncode == 0, f"{script} exited {result.returncode}:\n{result.stderr[-6000:]}"
    return result


# ----------------------------------------------------------------------------- OpenPCDet train.py / test.py
SET_CFGS = ["OPTIMIZATION.LR", "0.003", "DATA_CONFIG.POINT_CLOUD_RANGE", "[-40.0, -40.0, -3.0, 40.0, 40.0, 5.0]",
            "EXTRA.NOTE", "--seed"]  # a value that spells a launcher flag is still a value after --set
LAUNCHER_ONLY = ("--pcdet_tools", "--skip_preflight", "--chdir_tools", "--seed")


@pytest.mark.parametrize("nprocs", [2, 4])
@pytest.mark.parametrize("script, tool", [("dist_train.sh", "train.py"), ("dist_test.sh", "test.py")])
def test_openpcdet_tools_get_rank_and_arguments(tmp_path, script, tool, nprocs):
    """dist_train.sh runs with --skip_preflight on a config with a pre-flight error; dist_test.sh on the
    fine-tuning config, whose pre-flight passes and whose _BASE_CONFIG_ the plugin's lookup resolves."""
    from pcdet_rmae_ts.integration.preflight import check_config, failed

    tools = _standin_openpcdet(tmp_path)
    out = tmp_path / "records"
    out.mkdir()
    if tool == "train.py":
        cfg = tmp_path / "bad_warmup.yaml"
        cfg.write_text("OPTIMIZATION: {OPTIMIZER: adam, LR: 0.01, LR_WARMUP: True}\n")
        assert failed(check_config(cfg)), "the config must fail the pre-flight check to show --skip_preflight"
        ours = ["--skip_preflight", "--seed", str(SEED)]
        theirs = ["--cfg_file", str(cfg), "--batch_size", "2", "--epochs", "1", "--fix_random_seed",
                  "--merge_all_iters_to_one_epoch"]
    else:
        ours = ["--seed", str(SEED), "--pcdet_tools", str(tools)]
        theirs = ["--cfg_file", str(FINETUNE_CFG), "--batch_size", "2", "--ckpt", "none.pth"]
    env = _launch_env(PCDET_TOOLS=str(tools), STANDIN_OUT=str(out),
                      PYTHONPATH=os.pathsep.join([str(tools.parent), str(REPO)]))  # the stand-in pcdet wins
    _run(script, nprocs, theirs[:2] + ours + theirs[2:] + ["--set", *SET_CFGS], tmp_path, env)

    records = [json.loads((out / f"{tool}.rank{rank}.json").read_text()) for rank in range(nprocs)]
    torch.manual_seed(SEED)
    expected_draw = torch.rand(1).item()
    training = tool == "train.py"  # only train.py gets the differential-LR and tensorboard hooks
    expected_hooks = {"config_lookup": True, "registered": True, "tensorboard_lr": training, "numpy_checkpoint": True,
                      **({"optimizer": True, "merged_epochs": True} if training else {})}
    for rank, rec in enumerate(records):
        argv = rec["argv"]
        head = argv[:argv.index("--set")]
        assert rec["rank"] == rank and rec["world_size"] == nprocs
        assert rec["rank_sum"] == nprocs * (nprocs - 1) // 2
        assert rec["local_rank_arg"] == rec["env_local_rank"] == rank  # one node: local rank = rank
        assert head.count("--local_rank") == 1 and head[head.index("--local_rank") + 1] == str(rank)
        assert head[:2] == ["--launcher", "pytorch"] and head[2:-2] == theirs
        assert rec["set_cfgs"] == SET_CFGS and argv[argv.index("--set") + 1:] == SET_CFGS
        assert not set(head) & set(LAUNCHER_ONLY), head
        assert rec["start_method"] == "fork"
        assert rec["draw"] == expected_draw, "--seed must give every rank the same torch stream"
        assert rec["hooks"] == expected_hooks
        if tool == "test.py":
            assert rec["dataset"] == "CustomDataset"  # from the _BASE_CONFIG_ dataset file


# ----------------------------------------------------------------------------- pretraining engine
DUMP_STATE = """
    import runpy
    import sys

    import torch

    sys.path.insert(0, {repo!r})
    from pcdet_rmae_ts.engine import trainer as trainer_module
    from pcdet_rmae_ts.engine.checkpoint import unwrap

    original = trainer_module.Trainer.train


    def train(self, state):
        result = original(self, state)
        model = unwrap(self.model)
        record = {{"rank": torch.distributed.get_rank(), "world_size": torch.distributed.get_world_size(),
                   "ddp": model is not self.model, "state": model.state_dict()}}
        torch.save(record, {out!r} + "/rank%d.pt" % record["rank"])
        return result


    trainer_module.Trainer.train = train
    sys.argv = sys.argv[1:]
    runpy.run_path(sys.argv[0], run_name="__main__")
    """


def test_dist_pretrain_two_cpu_processes(tmp_path):
    """scripts/dist_pretrain.sh 2 on the CPU (gloo): one epoch of the demo config on 10 synthetic frames
    (8 for training).

    torchrun starts each worker with $PYTHON_EXEC: a wrapper that runs the real
    tools/train_rmae_cmae_phase1.py after making Trainer.train save the rank's final state, so the
    student and EMA teacher can be compared across ranks and with rank 0's checkpoint.
    N = 2 only: a run takes about as long as the rest of this file on a 2-core machine."""
    from pcdet_rmae_ts.engine.checkpoint import load_checkpoint

    states = tmp_path / "states"
    states.mkdir()
    wrapper = tmp_path / "dump_state.py"
    wrapper.write_text(textwrap.dedent(DUMP_STATE.format(repo=str(REPO), out=str(states))).lstrip())
    python_exec = tmp_path / "python_exec"
    python_exec.write_text(f'#!/usr/bin/env bash\nexec "{sys.executable}" "$1" "{wrapper}" "${{@:2}}"\n')
    python_exec.chmod(0o755)  # torchrun runs `$PYTHON_EXEC -u SCRIPT ARGS`
    args = ["--cfg_file", str(DEMO_CFG), "--device", "cpu", "--epochs", "1", "--batch_size", "2", "--workers", "0",
            "--fix_random_seed", "--output_dir", str(tmp_path / "output"),
            "--set", "DATA_CONFIG.DATA_PATH", str(tmp_path / "demo"), "DATA_CONFIG.SYNTHETIC.FRAMES", "10"]
    _run("dist_pretrain.sh", 2, args, tmp_path, _launch_env(PYTHON_EXEC=str(python_exec)))

    root = tmp_path / "output" / "demo" / "rmae_cmae_demo_pretraining" / "default"
    log = "".join(p.read_text() for p in root.glob("log_train_*.txt"))
    assert "world_size=2" in log and re.search(r"launcher +pytorch", log)
    assert sorted(p.name for p in (root / "ckpt").iterdir()) == ["checkpoint_epoch_1.pth"]  # rank 0 only, no .tmp
    ckpt = load_checkpoint(root / "ckpt" / "checkpoint_epoch_1.pth")
    assert ckpt["epoch"] == 1 and ckpt["it"] == 2  # 8 training frames / (2 processes x batch 2)

    ranks = [torch.load(states / f"rank{r}.pt", weights_only=True) for r in range(2)]
    assert [(r["rank"], r["world_size"], r["ddp"]) for r in ranks] == [(0, 2, True), (1, 2, True)]
    teacher_keys = [k for k in ranks[0]["state"] if ".teacher." in k]
    assert teacher_keys, "no EMA teacher tensors in the model state"
    assert ranks[0]["state"].keys() == ranks[1]["state"].keys() == ckpt["model_state"].keys()
    for key, value in ranks[0]["state"].items():
        assert torch.equal(value, ranks[1]["state"][key]), f"{key} differs across ranks"
        assert torch.equal(value, ckpt["model_state"][key]), f"{key} differs from the checkpoint"

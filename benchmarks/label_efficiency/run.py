"""Does pretraining help? Label-efficiency runs through the user's own commands, resumable.

Creates the splits (an unlabelled pretraining pool, a labelled pool with nested fractions, a held-out
validation set), then runs only the README's commands: the generator, ``tools/create_infos.py``,
``tools/train_rmae_cmae_phase1.py`` (one pretraining per arm), ``scripts/dist_train.sh`` and
``scripts/dist_test.sh``. Every finished fine-tune appends one record to the results JSON at once;
runs with a record are skipped, so the script continues where a device block ended. It needs an
OpenPCDet that the launchers find (``PCDET_TOOLS``) and never builds or contains OpenPCDet.

    python benchmarks/label_efficiency/run.py --work output/label_efficiency \\
        --results benchmarks/results/label_efficiency.json --budget_s 500

Folders under ``--work``: ``pool/`` (generated frames), ``pretrain/`` (ImageSets of the unlabelled +
labelled pools, no labels used), ``frac_<f>/`` (the labelled subset's infos and gt database: gt_sampling
never sees objects outside the fraction), ``runs/<name>.log``.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, List, Optional

REPO = Path(__file__).resolve().parents[2]
FT_CFG = "cfgs/custom_models/rmae_cmae_isarc_4class_finetune_phase1.yaml"
PRETRAIN_ARMS = {  # arm -> (pretraining config, extra --set pairs)
    "rmae": ("cfgs/custom_models/rmae_cmae_isarc_4class_pretraining_phase1.yaml", []),
    "rmae_ts": ("cfgs/custom_models/rmae_cmae_isarc_4class_pretraining_phase2.yaml", []),
    "rmae_voxels": ("cfgs/custom_models/rmae_cmae_isarc_4class_pretraining_phase1.yaml",
                    ["MODEL.BACKBONE_3D.MASKING_TARGET", "voxels"]),
}


@dataclass(frozen=True)
class Run:
    """One fine-tune: which encoder, which LR rule, how many labels, which seed."""

    arm: str  # scratch | rmae | rmae_ts | rmae_voxels
    lr: str  # differential | uniform
    label_fraction: float
    seed: int

    @property
    def name(self) -> str:
        return f"{self.arm}_{self.lr}_f{self.label_fraction:g}_s{self.seed}"


def plan_runs(arms: List[str], fractions: List[float], seeds: int, seeds_at_full: int) -> List[Run]:
    """Smallest fractions first (that is where pretraining should matter), scratch beside each arm."""
    runs = []
    for fraction in sorted(fractions):
        for seed in range(seeds if fraction < 1.0 else seeds_at_full):
            for arm in arms:
                lrs = ["uniform"] if arm == "scratch" else ["differential", "uniform"]
                runs.extend(Run(arm, lr, fraction, seed) for lr in lrs)
    return runs


def sh(cmd: List[str], log: Path, env: Optional[Dict[str, str]] = None) -> float:
    """Run a command from the repository root, its output into ``log``; wall seconds; raise on failure."""
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.time()
    with open(log, "a") as f:
        f.write(f"$ {' '.join(cmd)}\n")
        f.flush()
        status = subprocess.run(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT,
                                env=dict(os.environ, **(env or {}))).returncode
    if status:
        raise RuntimeError(f"exit {status}: {' '.join(cmd)} (log: {log})")
    return time.time() - start


def write_ids(folder: Path, split: str, ids: List[str]) -> None:
    (folder / "ImageSets").mkdir(parents=True, exist_ok=True)
    (folder / "ImageSets" / f"{split}.txt").write_text("\n".join(ids) + "\n")


def link_pool(folder: Path, pool: Path) -> None:
    """The generated points and labels, shared by every split folder (symbolic links, no copies)."""
    folder.mkdir(parents=True, exist_ok=True)
    for sub in ("points", "labels"):
        target = folder / sub
        if not target.exists():
            target.symlink_to(pool / sub, target_is_directory=True)


def split_ids(ids: List[str], pretrain_frames: int, labelled_frames: int, val_frames: int,
              fractions: List[float]) -> Dict[str, List[str]]:
    """Disjoint pools in a fixed order: the first frames are unlabelled, then the labelled pool, the last
    ``val_frames`` are held out. Each fraction takes the first ``round(f x labelled)`` labelled frames, so a
    smaller fraction is a subset of a larger one. Pretraining sees the unlabelled and labelled pools."""
    if len(ids) != pretrain_frames + labelled_frames + val_frames:
        raise ValueError(f"{len(ids)} frames, the plan needs {pretrain_frames + labelled_frames + val_frames}")
    labelled = ids[pretrain_frames:pretrain_frames + labelled_frames]
    splits = {"pretrain": ids[:pretrain_frames] + labelled, "val": ids[len(ids) - val_frames:]}
    for fraction in fractions:
        splits[f"train_{fraction:g}"] = labelled[:max(1, round(fraction * len(labelled)))]
    return splits


def prepare_data(args, work: Path) -> Dict[float, Path]:
    """Generate the pool once, split it (nested fractions: a fixed shuffle, the first k frames), and
    write infos per fraction. Returns fraction -> DATA_PATH."""
    pool = work / "pool"
    total = args.pretrain_frames + args.labelled_frames + args.val_frames
    if not (pool / "ImageSets" / "train.txt").exists():
        sh([sys.executable, "-m", "pcdet_rmae_ts.data.synthetic", "--out", str(pool), "--frames", str(total),
            "--profile", args.profile, "--cfg_file", FT_CFG, "--seed", str(args.data_seed)], work / "data.log")
    ids = sorted(p.stem for p in (pool / "points").glob("*.npy"))
    if len(ids) != total:
        raise RuntimeError(f"{pool} holds {len(ids)} frames, the plan needs {total}: use a new --work folder")
    splits = split_ids(ids, args.pretrain_frames, args.labelled_frames, args.val_frames, args.fractions)
    write_ids(work / "pretrain", "train", splits["pretrain"])  # no labels read
    link_pool(work / "pretrain", pool)
    folders = {}
    for fraction in args.fractions:
        folder = work / f"frac_{fraction:g}"
        folders[fraction] = folder
        if (folder / "custom_infos_val.pkl").exists():
            continue
        link_pool(folder, pool)
        write_ids(folder, "train", splits[f"train_{fraction:g}"])
        write_ids(folder, "val", splits["val"])
        sh([sys.executable, "tools/create_infos.py", "--cfg_file", FT_CFG, "--set", "DATA_CONFIG.DATA_PATH",
            str(folder)], work / "data.log")
    return folders


def pretrain(arm: str, args, work: Path, timings: Dict[str, float]) -> Path:
    """The encoder of one pretraining arm (pretrained once, reused by every fine-tune)."""
    cfg, extra = PRETRAIN_ARMS[arm]
    tag = f"le_{arm}"
    ckpt_dir = REPO / "output" / "custom_models" / Path(cfg).stem / tag / "ckpt"
    ckpt = ckpt_dir / f"checkpoint_epoch_{args.pretrain_epochs}.pth"
    if not ckpt.exists():
        timings[arm] = sh([sys.executable, "tools/train_rmae_cmae_phase1.py", "--cfg_file", cfg, "--batch_size", "8",
                           "--epochs", str(args.pretrain_epochs), "--extra_tag", tag, "--set", "DATA_CONFIG.DATA_PATH",
                           str(work / "pretrain"), *extra], work / "runs" / f"pretrain_{arm}.log")
        (work / "pretrain_times.json").write_text(json.dumps(timings, indent=2))
    return ckpt


def newest_result(folder: Path) -> dict:
    found = sorted(folder.rglob("result_custom.json"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise RuntimeError(f"no result_custom.json under {folder}")
    return json.loads(found[-1].read_text())


def finetune(run: Run, data: Path, encoder: Optional[Path], args, work: Path, pcdet_root: Path) -> dict:
    """dist_train.sh then dist_test.sh on the last checkpoint; the record for the results file."""
    log = work / "runs" / f"{run.name}.log"
    common = ["--cfg_file", FT_CFG, "--batch_size", str(args.batch_size), "--extra_tag", f"le_{run.name}"]
    sets = ["--set", "DATA_CONFIG.DATA_PATH", str(data),
            "OPTIMIZATION.DIFFERENTIAL_LR", str(run.lr == "differential")]
    train = ["bash", "scripts/dist_train.sh", "1", *common, "--epochs", str(args.finetune_epochs),
             "--seed", str(run.seed)]
    if encoder is not None:
        train += ["--pretrained_model", str(encoder)]
    finetune_s = sh(train + sets, log)
    out = pcdet_root / "output" / "custom_models" / Path(FT_CFG).stem / f"le_{run.name}"
    ckpt = out / "ckpt" / f"checkpoint_epoch_{args.finetune_epochs}.pth"
    sh(["bash", "scripts/dist_test.sh", "1", *common, "--ckpt", str(ckpt), *sets], log)
    result = newest_result(out / "eval" / f"epoch_{args.finetune_epochs}")
    return dict(asdict(run), mAP_3D=result["mAP_3D"], mAP_BEV=result["mAP_BEV"], AP_3D=result["AP_3D"],
                AP_BEV=result["AP_BEV"], range=result.get("range"), finetune_s=round(finetune_s, 1))


def load_records(path: Path) -> List[dict]:
    return json.loads(path.read_text()) if path.exists() else []


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", default="output/label_efficiency")
    parser.add_argument("--results", default="benchmarks/results/label_efficiency.json")
    parser.add_argument("--arms", nargs="+", default=["scratch", "rmae", "rmae_ts"],
                        choices=["scratch", *PRETRAIN_ARMS])
    parser.add_argument("--fractions", nargs="+", type=float, default=[0.05, 0.2, 1.0])
    parser.add_argument("--seeds", type=int, default=3, help="fine-tuning seeds below 100 %% labels")
    parser.add_argument("--seeds_at_full", type=int, default=1)
    parser.add_argument("--profile", default="hard")
    parser.add_argument("--data_seed", type=int, default=0)
    parser.add_argument("--pretrain_frames", type=int, default=600)
    parser.add_argument("--labelled_frames", type=int, default=400)
    parser.add_argument("--val_frames", type=int, default=300)
    parser.add_argument("--pretrain_epochs", type=int, default=20)
    parser.add_argument("--finetune_epochs", type=int, default=20)
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--budget_s", type=float, default=float("inf"),
                        help="start no new fine-tune after this many seconds (device blocks are short)")
    args = parser.parse_args()
    smallest = max(1, round(min(args.fractions) * args.labelled_frames))
    if args.finetune_epochs * -(-smallest // args.batch_size) < 10:
        # OpenPCDet's adam_onecycle divides by int(PCT_START x total steps): too few steps crash it
        parser.error(f"the smallest fraction gives {smallest} frames, i.e. fewer than 10 fine-tuning iterations; "
                     "raise --labelled_frames, --finetune_epochs or the smallest --fractions")
    started = time.time()
    work, results = (REPO / args.work).resolve(), (REPO / args.results).resolve()
    pcdet_root = Path(os.environ["PCDET_TOOLS"]).resolve().parent if os.environ.get("PCDET_TOOLS") else None
    if pcdet_root is None:
        import pcdet

        pcdet_root = Path(pcdet.__file__).resolve().parents[1]
    import torch

    card = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    folders = prepare_data(args, work)
    timings_file = work / "pretrain_times.json"
    timings = json.loads(timings_file.read_text()) if timings_file.exists() else {}
    records = load_records(results)
    done = {(r["arm"], r["lr"], r["label_fraction"], r["seed"]) for r in records}
    for run in plan_runs(args.arms, args.fractions, args.seeds, args.seeds_at_full):
        if (run.arm, run.lr, run.label_fraction, run.seed) in done:
            continue
        if time.time() - started > args.budget_s:
            print(f"budget reached after {time.time() - started:.0f} s; run again to continue", flush=True)
            break
        encoder = None if run.arm == "scratch" else pretrain(run.arm, args, work, timings)
        record = finetune(run, folders[run.label_fraction], encoder, args, work, pcdet_root)
        record.update(pretrain_s=timings.get(run.arm), card=card, commit=commit,
                      plan={k: getattr(args, k) for k in ("profile", "pretrain_frames", "labelled_frames", "val_frames",
                                                          "pretrain_epochs", "finetune_epochs", "batch_size")})
        records.append(record)
        results.parent.mkdir(parents=True, exist_ok=True)
        results.write_text(json.dumps(records, indent=1))
        print(f"{run.name}: mAP_3D {record['mAP_3D']:.2f} mAP_BEV {record['mAP_BEV']:.2f} "
              f"({record['finetune_s']:.0f} s)", flush=True)


if __name__ == "__main__":
    main()

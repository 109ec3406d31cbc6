"""VoxelNeXt's target assignment: OpenPCDet's per-box loop vs the launcher's batched version, and what
that does to a whole fine-tuning step.

Part 1 (needs pcdet and CUDA): ``VoxelNeXtHead.assign_targets`` of the fine-tune config's head on a
batch of 4 synthetic BEV scenes, per (boxes per sample, BEV voxels per sample), stock vs batched, in the
same run (median of --repeats calls), with whether the outputs are identical (and the largest difference).

Part 2 (``--data DIR``, infos made with tools/create_infos.py): ``scripts/dist_train.sh`` on that data,
once with ``PCDET_RMAE_TS_STOCK_TARGETS=1`` and once without; the mean of OpenPCDet's logged
``Forward time`` (data to optimiser step) over the iterations after the first epoch.

    PYTHONPATH=. python benchmarks/bench_voxelnext_targets.py [--data DIR --epochs 2] [--out FILE|DIR|-]

Each run is added to ``benchmarks/results/voxelnext_targets_<card>.json`` unless ``--out`` says otherwise.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_pretrain import Timer  # noqa: E402
from openpcdet_log import train_lines  # noqa: E402
from results_file import add_out_argument, append_run, card_name  # noqa: E402

from pcdet_rmae_ts.integration.pcdet import STOCK_TARGETS_ENV, install_batched_voxelnext_targets  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
FT_CFG = REPO / "cfgs" / "custom_models" / "rmae_cmae_isarc_4class_finetune_phase1.yaml"
GRID = 176  # BEV cells per side at stride 8 for the user's +-70.4 m, 0.1 m grid


def _head():
    """The fine-tune config's VoxelNeXtHead, built by OpenPCDet, on the GPU."""
    from pcdet.models.dense_heads.voxelnext_head import VoxelNeXtHead

    from pcdet_rmae_ts.config import cfg_from_yaml_file

    cfg = cfg_from_yaml_file(str(FT_CFG))
    pcr = cfg.DATA_CONFIG.POINT_CLOUD_RANGE
    return VoxelNeXtHead(cfg.MODEL.DENSE_HEAD, input_channels=128, num_class=len(cfg.CLASS_NAMES),
                         class_names=cfg.CLASS_NAMES, grid_size=None, point_cloud_range=pcr,
                         voxel_size=[0.1, 0.1, 0.2]).cuda()


def _inputs(boxes_per_sample: int, voxels: int, batch: int = 4, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    spatial = []
    for _ in range(batch):
        cells = torch.randperm(GRID * GRID, generator=g)[:voxels]
        spatial.append(torch.stack((cells % GRID, cells // GRID), -1).int().cuda())
    n = boxes_per_sample
    boxes = torch.cat((torch.rand(batch, n, 2, generator=g) * 136 - 68, torch.rand(batch, n, 1, generator=g),
                       torch.rand(batch, n, 3, generator=g) * 8 + 2, torch.rand(batch, n, 1, generator=g) * 6 - 3,
                       torch.randint(1, 5, (batch, n, 1), generator=g).float()), -1).cuda()
    return boxes, [voxels] * batch, spatial, [GRID, GRID]


def bench_assign_targets(sizes, repeats: int) -> list:
    from pcdet.models.dense_heads import voxelnext_head

    cls = voxelnext_head.VoxelNeXtHead
    stock = getattr(cls.assign_target_of_single_head, "original", cls.assign_target_of_single_head)
    cls.assign_target_of_single_head = stock
    head = _head()
    timer = Timer(torch.device("cuda"))  # median of CUDA-event times, after one warm-up call
    rows = []
    for boxes_per_sample, voxels in sizes:
        boxes, *rest = _inputs(boxes_per_sample, voxels)

        def assign(boxes=boxes, rest=rest):  # assign_targets writes head-local class ids into its boxes
            return head.assign_targets(boxes.clone(), *rest)

        cls.assign_target_of_single_head = stock
        want = assign()
        stock_ms = statistics.median(timer(lambda i: assign(), 1, repeats))
        install_batched_voxelnext_targets(voxelnext_head, environ={})
        got = assign()
        pairs = [(a, b) for key in ("heatmaps", "target_boxes", "inds", "masks") for a, b in zip(got[key], want[key])]
        same = all(torch.equal(a, b) for a, b in pairs)
        max_diff = max(float((a.double() - b.double()).abs().max()) if a.numel() else 0.0 for a, b in pairs)
        batched_ms = statistics.median(timer(lambda i: assign(), 1, repeats))
        cls.assign_target_of_single_head = stock
        rows.append(dict(boxes_per_sample=boxes_per_sample, voxels_per_sample=voxels, batch=4,
                         stock_ms=round(stock_ms, 2), batched_ms=round(batched_ms, 2),
                         speedup=round(stock_ms / batched_ms, 1), identical=same,
                         max_abs_diff=max_diff))
    return rows


def bench_finetune(data: str, epochs: int, batch_size: int, log_dir: Path) -> list:
    rows = []
    for name, env in (("stock loop", {STOCK_TARGETS_ENV: "1"}), ("batched", {})):
        log = log_dir / f"finetune_{name.replace(' ', '_')}.log"
        tag = f"bench_targets_{name.replace(' ', '_')}"
        cmd = ["bash", "scripts/dist_train.sh", "1", "--cfg_file", str(FT_CFG), "--batch_size", str(batch_size),
               "--epochs", str(epochs), "--extra_tag", tag, "--seed", "0", "--logger_iter_interval", "1",
               "--ckpt_save_interval", str(epochs), "--set", "DATA_CONFIG.DATA_PATH", data]
        start = time.time()
        with open(log, "w") as f:
            status = subprocess.run(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT,
                                    env=dict(os.environ, **env)).returncode
        if status:
            raise SystemExit(f"dist_train.sh failed ({name}); log: {log}")
        # OpenPCDet logs "Train: epoch/total ... Forward time: current(mean)"; epoch 1 holds spconv's tuning
        steps = [line.forward_s for line in train_lines(log.read_text()) if line.epoch > 1]
        rows.append(dict(targets=name, iterations=len(steps), forward_s=round(sum(steps) / max(len(steps), 1), 3),
                         wall_s=round(time.time() - start, 1)))
    base = rows[0]["forward_s"]
    for row in rows:
        row["x_stock"] = round(row["forward_s"] / base, 2)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--data", default=None, help="a DATA_PATH with infos: also time whole fine-tuning steps")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--log-dir", default="output/bench_voxelnext_targets")
    add_out_argument(parser)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("needs CUDA and OpenPCDet (VoxelNeXtHead puts its tensors on the GPU)")
    card = card_name(torch.device("cuda"))
    sizes = [(20, 8000), (80, 8000), (80, 20000)]
    targets = bench_assign_targets(sizes, args.repeats)
    print(f"assign_targets, batch 4, {card}")
    print("boxes/sample  voxels/sample  stock ms  batched ms  speed-up  identical  max |diff|")
    for r in targets:
        print(f"{r['boxes_per_sample']:>12}  {r['voxels_per_sample']:>13}  {r['stock_ms']:>8}  {r['batched_ms']:>10}"
              f"  {r['speedup']:>7}x  {str(r['identical']):>9}  {r['max_abs_diff']:.2g}")
    payload = {"assign_targets": targets}
    # written now, then replaced with part 2 added: a run cut off in part 2 keeps part 1
    run_id = append_run(args.out, "voxelnext_targets", card, payload, label=args.label)
    if args.data:
        log_dir = REPO / args.log_dir
        log_dir.mkdir(parents=True, exist_ok=True)
        payload["finetune_step"] = bench_finetune(args.data, args.epochs, args.batch_size, log_dir)
        print("fine-tuning step (dist_train.sh, after epoch 1)")
        for r in payload["finetune_step"]:
            print(f"{r['targets']:>10}: {r['forward_s']} s/step over {r['iterations']} steps "
                  f"(x{r['x_stock']} of the stock loop), wall {r['wall_s']} s")
        append_run(args.out, "voxelnext_targets", card, payload, label=args.label, run_id=run_id)


if __name__ == "__main__":
    main()

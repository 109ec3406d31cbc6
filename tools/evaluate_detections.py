"""Evaluate custom-format predictions against custom-format labels: per-class 3-D / BEV AP (R40).

    python tools/evaluate_detections.py --gt_dir data/isarc/labels --pred_dir output/.../final_result/data \\
        --classes dumptruck excavator grader roller --cfg_file cfgs/dataset_configs/custom_dataset_isarc.yaml \\
        --ids_file data/isarc/ImageSets/val.txt --out result.json

Frames are the ``.txt`` files of ``--gt_dir`` (or the ids of ``--ids_file``); a frame without a
prediction file has no detections. Prints the table, writes the result as JSON (null for the AP
of a class without ground truth). Exit status 1 with a message on bad input.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import List, Optional, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from pcdet_rmae_ts.config import cfg_from_yaml_file  # noqa: E402
from pcdet_rmae_ts.evaluation import (  # noqa: E402
    evaluate_detections,
    format_results,
    load_label_dir,
    parse_evaluation_config,
    write_results_json,
)


def read_ids(ids_file: str) -> List[str]:
    """Frame ids of an ``ImageSets/*.txt`` file, one per line (blank lines skipped)."""
    with open(ids_file, "r", encoding="utf-8") as stream:
        return [line.strip() for line in stream if line.strip()]


def evaluation_section(cfg_file: Optional[str]) -> tuple:
    """``(EVALUATION mapping or None, CLASS_NAMES or None)`` of a dataset config (top level) or a
    model config (``DATA_CONFIG``); ``_BASE_CONFIG_`` is resolved as OpenPCDet does."""
    if cfg_file is None:
        return None, None
    cfg = cfg_from_yaml_file(cfg_file)
    data_cfg = cfg.get("DATA_CONFIG") or {}
    section = cfg.get("EVALUATION", data_cfg.get("EVALUATION"))
    class_names = cfg.get("CLASS_NAMES", data_cfg.get("CLASS_NAMES"))
    return section, class_names


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Per-class 3-D / BEV AP (R40) of custom-format predictions.")
    parser.add_argument("--gt_dir", required=True, help="folder of label .txt files (x y z dx dy dz heading class)")
    parser.add_argument("--pred_dir", required=True,
                        help="folder of prediction .txt files (x y z dx dy dz heading class score)")
    parser.add_argument("--classes", nargs="+", default=None,
                        help="classes to evaluate (default: CLASS_NAMES of --cfg_file)")
    parser.add_argument("--cfg_file", default=None,
                        help="dataset or model config with an EVALUATION (or DATA_CONFIG.EVALUATION) section")
    parser.add_argument("--ids_file", default=None, help="frame ids, one per line (default: every file of --gt_dir)")
    parser.add_argument("--out", default=None, help="write the result here as JSON")
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> dict:
    """Load, evaluate, print and write; raises ValueError / FileNotFoundError on bad input."""
    section, cfg_classes = evaluation_section(args.cfg_file)
    try:
        config = parse_evaluation_config(section)
    except ValueError as err:
        if args.cfg_file and str(args.cfg_file) not in str(err):  # a nested section's file is not known to it
            raise ValueError(f"{args.cfg_file}: {err}") from None
        raise
    class_names = args.classes or cfg_classes
    if not class_names:
        raise ValueError("no classes to evaluate: pass --classes, or a --cfg_file with CLASS_NAMES")
    ids = read_ids(args.ids_file) if args.ids_file else None
    gt_annos = load_label_dir(args.gt_dir, ids=ids)
    if not gt_annos:
        raise ValueError(f"no frames to evaluate: {args.ids_file or args.gt_dir} lists no .txt label files")
    frame_ids = [anno["frame_id"] for anno in gt_annos]
    found = [i for i in frame_ids if (Path(args.pred_dir) / f"{i}.txt").is_file()]
    if not found:
        raise FileNotFoundError(f"none of the {len(frame_ids)} frames has a prediction file in {args.pred_dir} "
                                f"(looked for e.g. {Path(args.pred_dir) / (frame_ids[0] + '.txt')})")
    det_annos = load_label_dir(args.pred_dir, ids=frame_ids, with_score=True, allow_missing=True)
    result = evaluate_detections(gt_annos, det_annos, class_names, config)
    print(f"{len(frame_ids)} frames, {len(frame_ids) - len(found)} without a prediction file")
    print(format_results(result))
    if args.out:
        print(f"wrote {write_results_json(result, args.out)}")
    return result


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    try:
        run(args)
    except (ValueError, FileNotFoundError) as err:
        print(f"evaluate_detections: error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

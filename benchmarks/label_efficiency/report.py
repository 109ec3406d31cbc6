"""Table and plot of the label-efficiency results (``benchmarks/results/label_efficiency.json``).

Per cell (arm, LR rule, label fraction): mean ± sample std of mAP 3-D / BEV over seeds and the mean
per-class AP; per pretrained cell its difference to scratch at the same fraction, which counts only when
it is larger than twice the pooled std of the two cells. Then the cost (pretraining as a fraction of one
full fine-tune) and the agreement of train.py's scores with dist_test.sh's.

    python benchmarks/label_efficiency/report.py --results benchmarks/results/label_efficiency.json \\
        --plot benchmarks/results/label_efficiency.png
"""
from __future__ import annotations

import argparse
import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

Cell = Tuple[str, str, float]  # arm, lr, label fraction


def mean_std(values: Sequence[float]) -> Tuple[float, float]:
    """Mean and sample standard deviation (NaN for a single value)."""
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else float("nan")
    return mean, std


def pooled_std(a: Sequence[float], b: Sequence[float]) -> float:
    """Pooled sample std of two groups (NaN when neither has two values)."""
    dof = len(a) + len(b) - 2
    if dof <= 0:
        return float("nan")
    sq = sum((v - mean_std(g)[0]) ** 2 for g in (a, b) for v in g)
    return math.sqrt(sq / dof)


def cell_of(record: dict) -> Cell:
    return record["arm"], record["lr"], float(record["label_fraction"])


def table_order(cells) -> List[Cell]:
    """Rows of every table: by label fraction, scratch first, then arm and LR rule."""
    return sorted(cells, key=lambda c: (c[2], c[0] != "scratch", c[0], c[1]))


def means_table(by_cell: Dict[Cell, Dict], columns: Sequence, headings: Sequence[str], seeds: bool = False) -> str:
    """One row per cell: the mean of each column's values ('—' where the cell has none); with ``seeds``,
    a column of the most values any of the cell's columns holds."""
    lines = ["| arm | LR | labels | " + " | ".join((["seeds"] if seeds else []) + list(headings)) + " |",
             "| --- | --- | --- |" + " --- |" * (len(columns) + seeds)]
    for cell in table_order(by_cell):
        count = [str(max(len(v) for v in by_cell[cell].values()))] if seeds else []
        values = [f"{mean_std(by_cell[cell][c])[0]:.2f}" if by_cell[cell].get(c) else "—" for c in columns]
        lines.append(f"| {cell[0]} | {cell[1]} | {cell[2]:.0%} | {' | '.join(count + values)} |")
    return "\n".join(lines)


def group(records: Sequence[dict], key: str = "mAP_3D") -> Dict[Cell, List[float]]:
    cells: Dict[Cell, List[float]] = defaultdict(list)
    for r in records:
        cells[cell_of(r)].append(float(r[key]))
    return dict(cells)


def compare_to_scratch(cells: Dict[Cell, List[float]]) -> Dict[Cell, Tuple[float, float, bool]]:
    """(difference of means, pooled std, counts = |difference| > 2 pooled std) against scratch at the same
    fraction: trained scratch (uniform LR), or for a frozen backbone scratch's frozen (random) one."""
    out = {}
    for (arm, lr, fraction), values in cells.items():
        base = cells.get(("scratch", "frozen" if lr == "frozen" else "uniform", fraction))
        if arm == "scratch" or not base:
            continue
        diff = mean_std(values)[0] - mean_std(base)[0]
        spread = pooled_std(values, base)
        out[(arm, lr, fraction)] = (diff, spread, bool(spread == spread and abs(diff) > 2 * spread))
    return out


def _pm(mean: float, std: float) -> str:
    """'mean ± std', or the mean alone where one value gives no spread."""
    return f"{mean:.2f} ± {std:.2f}" if std == std else f"{mean:.2f}"


def markdown(records: Sequence[dict]) -> str:
    by3d, bybev = group(records, "mAP_3D"), group(records, "mAP_BEV")
    vs = compare_to_scratch(by3d)
    lines = ["| arm | LR | labels | seeds | mAP 3-D | mAP BEV | Δ 3-D vs scratch (2σ?) |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for cell in table_order(by3d):
        m3, s3 = mean_std(by3d[cell])
        mb, sb = mean_std(bybev[cell])
        diff = vs.get(cell)
        if diff is None:
            note = "—"
        elif diff[1] != diff[1]:
            note = f"{diff[0]:+.2f} (one seed each: no spread to judge)"
        else:
            note = f"{diff[0]:+.2f} ± {diff[1]:.2f} ({'yes' if diff[2] else 'no'})"
        lines.append(f"| {cell[0]} | {cell[1]} | {cell[2]:.0%} | {len(by3d[cell])} | {_pm(m3, s3)} | "
                     f"{_pm(mb, sb)} | {note} |")
    return "\n".join(lines)


def per_class_markdown(records: Sequence[dict], key: str = "AP_3D") -> str:
    """Mean per-class AP of each cell (classes without ground truth, None in the records, are left out)."""
    classes = sorted({c for r in records for c, v in r.get(key, {}).items() if v is not None})
    cells: Dict[Cell, Dict[str, List[float]]] = defaultdict(lambda: defaultdict(list))
    for r in records:
        for c in classes:
            if r.get(key, {}).get(c) is not None:
                cells[cell_of(r)][c].append(float(r[key][c]))
    return means_table(cells, classes, classes)


GOAL_GAIN = 5.0  # the target: pretrained >= +5 mAP 3-D over scratch at the smallest fraction
GOAL_LRS = ("differential", "uniform")  # the user's LR rules; slow_backbone and frozen are diagnostics


def goals(records: Sequence[dict]) -> List[str]:
    """The issue's three goals, each judged on the records: the best pretrained cell at the smallest
    fraction >= +GOAL_GAIN mAP 3-D over scratch and above 2 pooled std; no pretrained cell at the largest
    fraction below scratch by more than 2 pooled std; the differential LR's mean >= the uniform LR's for
    every pretrained arm and fraction that has both. Cells of the diagnostic LR rules are not judged."""
    cells = group(records)
    vs = {c: v for c, v in compare_to_scratch(cells).items() if c[1] in GOAL_LRS}
    fractions = sorted({c[2] for c in cells})
    lines = []
    small = {c: v for c, v in vs.items() if c[2] == fractions[0]}
    if small:
        best, (diff, _, counts) = max(small.items(), key=lambda item: item[1][0])
        met = diff >= GOAL_GAIN and counts
        lines.append(f"{'met' if met else 'NOT met'}: >= +{GOAL_GAIN:g} mAP at {fractions[0]:.0%} labels "
                     f"(best: {best[0]} {best[1]}, {diff:+.2f}{', above 2 std' if counts else ', not above 2 std'})")
    large = {c: v for c, v in vs.items() if c[2] == fractions[-1]} if len(fractions) > 1 else {}
    if large:
        losses = [f"{c[0]} {c[1]} {d:+.2f}" for c, (d, _, counts) in sorted(large.items()) if d < 0 and counts]
        unjudged = [c for c, (_, spread, _) in large.items() if spread != spread]
        verdict = "NOT met" if losses else ("met" if not unjudged else "not judged (one seed: no spread)")
        worst = min(d for d, _, _ in large.values())
        lines.append(f"{verdict}: no loss at {fractions[-1]:.0%} labels (lowest difference {worst:+.2f}"
                     + (f"; significant losses: {', '.join(losses)}" if losses else "") + ")")
    pairs = [(arm, f, cells[(arm, "differential", f)], cells[(arm, "uniform", f)])
             for arm, lr, f in cells if lr == "differential" and (arm, "uniform", f) in cells]
    if pairs:
        below = [f"{arm} at {f:.0%} ({mean_std(d)[0]:.2f} < {mean_std(u)[0]:.2f})"
                 for arm, f, d, u in sorted(pairs) if mean_std(d)[0] < mean_std(u)[0]]
        lines.append(f"{'NOT met' if below else 'met'}: differential LR >= uniform LR"
                     + (f" (below: {', '.join(below)})" if below else ""))
    return lines


def range_markdown(records: Sequence[dict], key: str = "mAP_3D") -> str:
    """Mean ``key`` per distance band (the evaluator's ``range`` block) and cell: does pretraining help
    where the machines are far and their points sparse?"""
    by_cell: Dict[Cell, Dict[str, List[float]]] = defaultdict(lambda: defaultdict(list))
    for r in records:
        for band, scores in (r.get("range") or {}).items():
            if scores.get(key) is not None:
                by_cell[cell_of(r)][band].append(float(scores[key]))
    if not by_cell:
        return "no record holds range bands"
    bands = sorted({b for c in by_cell.values() for b in c}, key=lambda b: float(b.split("-")[0]))
    return means_table(by_cell, bands, [f"{b} m" for b in bands])


def cost_markdown(records: Sequence[dict]) -> str:
    """Wall time of each pretraining and of the fine-tunes, and pretraining as a fraction of one fine-tune
    at the largest label fraction (the mean over its runs, with how many jobs shared the GPU in those)."""
    full = max(float(r["label_fraction"]) for r in records)
    at_full = [r for r in records if float(r["label_fraction"]) == full]
    finetune = [float(r["finetune_s"]) for r in at_full]
    per_full = sum(finetune) / len(finetune)
    shared = sorted({r["plan"]["parallel"] for r in at_full if "parallel" in r.get("plan", {})})
    context = f"; jobs sharing the GPU: {', '.join(map(str, shared))}" if shared else ""
    lines = [f"fine-tune at {full:.0%} labels: {per_full:.0f} s (mean of {len(finetune)} runs{context})"]
    pretrain = {r["arm"]: float(r["pretrain_s"]) for r in records if r.get("pretrain_s") is not None}
    for arm, seconds in sorted(pretrain.items()):
        lines.append(f"pretraining {arm}: {seconds:.0f} s = {seconds / per_full:.2f} x one fine-tune at {full:.0%}")
    return "\n".join(lines)


def score_check(records: Sequence[dict]) -> str:
    """train.py's final evaluation against dist_test.sh on the runs scored both ways (the driver keeps
    train.py's score as ``mAP_3D``; runs scored afterwards keep dist_test.sh's and ``train_eval_mAP_3D``)."""
    pairs = [(r["mAP_3D"], r["dist_test_mAP_3D"]) for r in records if "dist_test_mAP_3D" in r]
    pairs += [(r["train_eval_mAP_3D"], r["mAP_3D"]) for r in records if "train_eval_mAP_3D" in r]
    if not pairs:
        return "no run was scored by both train.py and dist_test.sh"
    worst = max(abs(a - b) for a, b in pairs)
    return f"{len(pairs)} runs scored by both train.py and dist_test.sh: largest mAP 3-D difference {worst:.3f}"


def curves(records: Sequence[dict]) -> Dict[Cell, Dict[int, List[float]]]:
    """Per cell, the training loss at each curve step over the seeds whose record holds a curve."""
    out: Dict[Cell, Dict[int, List[float]]] = defaultdict(lambda: defaultdict(list))
    for r in records:
        for step, loss in r.get("loss_curve") or []:
            out[cell_of(r)][int(step)].append(float(loss))
    return out


def curve_window(records: Sequence[dict]) -> Optional[int]:
    """Steps per curve point: a curve's first point ends the first window (the driver's ``CURVE_WINDOW``)."""
    firsts = [int(r["loss_curve"][0][0]) for r in records if r.get("loss_curve")]
    return min(firsts) if firsts else None


def curves_markdown(records: Sequence[dict], every: int = 100) -> str:
    """Fine-tuning loss (the mean over each window of steps, then over seeds) every ``every`` steps:
    does a pretrained encoder fit the labelled frames faster than scratch?"""
    by_cell = curves(records)
    if not by_cell:
        return "no record holds a training-loss curve"
    steps = sorted({s for c in by_cell.values() for s in c if s % every == 0})
    return means_table(by_cell, steps, [f"step {s}" for s in steps], seeds=True)


def panels(count: int, width: float):
    """A figure with ``count`` panels side by side (matplotlib only when a plot is asked for)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, count, figsize=(width * count, 4), squeeze=False)
    return fig, axes[0]


def save(fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def plot_curves(records: Sequence[dict], path: Path) -> None:
    by_cell = curves(records)
    fractions = sorted({c[2] for c in by_cell})
    fig, axes = panels(len(fractions), 5.5)
    for ax, fraction in zip(axes, fractions):
        for cell in sorted(c for c in by_cell if c[2] == fraction):
            steps = sorted(by_cell[cell])
            ax.plot(steps, [mean_std(by_cell[cell][s])[0] for s in steps], marker=".", label=f"{cell[0]} ({cell[1]})")
        ax.set_title(f"{fraction:.0%} labels")
        ax.set_xlabel("optimiser step")
        ax.set_ylabel("training loss (window mean, mean over seeds)")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    save(fig, path)


def plot(records: Sequence[dict], path: Path) -> None:
    fig, axes = panels(2, 5.5)
    for ax, key in zip(axes, ("mAP_3D", "mAP_BEV")):
        cells = group(records, key)
        for arm, lr in sorted({(c[0], c[1]) for c in cells}):
            xs = sorted(c[2] for c in cells if c[:2] == (arm, lr))
            stats = [mean_std(cells[(arm, lr, x)]) for x in xs]
            ax.errorbar([100 * x for x in xs], [m for m, _ in stats],
                        yerr=[0 if s != s else s for _, s in stats], marker="o", capsize=3, label=f"{arm} ({lr})")
        ax.set_xscale("log")
        ax.set_xlabel("labelled frames (%)")
        ax.set_ylabel(key.replace("_", " "))
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    save(fig, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", default="benchmarks/results/label_efficiency.json")
    parser.add_argument("--plot", default=None, help="PNG file for mAP vs label fraction")
    parser.add_argument("--curves_plot", default=None, help="PNG file for the fine-tuning loss curves")
    args = parser.parse_args()
    records = json.loads(Path(args.results).read_text())
    print(markdown(records))
    print("\nThe issue's goals\n")
    print("\n".join(goals(records)))
    print("\nPer-class AP 3-D (mean over seeds)\n")
    print(per_class_markdown(records))
    print("\nmAP 3-D per distance band (mean over seeds)\n")
    print(range_markdown(records))
    print("\nCost\n")
    print(cost_markdown(records))
    print(score_check(records))
    print(f"\nFine-tuning loss (mean over {curve_window(records)}-step windows and seeds)\n")
    print(curves_markdown(records))
    if args.plot:
        plot(records, Path(args.plot))
    if args.curves_plot:
        plot_curves(records, Path(args.curves_plot))


if __name__ == "__main__":
    main()

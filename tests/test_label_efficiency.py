"""The label-efficiency driver's splits and statistics (benchmarks/label_efficiency): nested fractions,
disjoint pools, the 2-sigma rule. The GPU runs themselves are in benchmarks/README.md."""
from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parents[1] / "benchmarks" / "label_efficiency"


def _load(name):
    spec = importlib.util.spec_from_file_location(f"label_efficiency_{name}", HERE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


run, report = _load("run"), _load("report")


@pytest.mark.parametrize("sizes", [(60, 40, 30), (7, 13, 5)])
def test_splits_are_nested_disjoint_and_hold_out_validation(sizes):
    ids = [f"{i:06d}" for i in range(sum(sizes))]
    fractions = [0.05, 0.2, 0.5, 1.0]
    splits = run.split_ids(ids, *sizes, fractions)
    trains = [splits[f"train_{f:g}"] for f in fractions]
    for small, large in zip(trains, trains[1:]):
        assert set(small) <= set(large) and len(small) <= len(large)
    assert len(trains[-1]) == sizes[1] and all(len(t) >= 1 for t in trains)
    assert len(splits["val"]) == sizes[2] and not set(splits["val"]) & set(splits["pretrain"])
    assert not set(splits["val"]) & set(trains[-1])
    assert set(trains[-1]) <= set(splits["pretrain"]) and len(splits["pretrain"]) == sizes[0] + sizes[1]
    with pytest.raises(ValueError, match="plan needs"):
        run.split_ids(ids[:-1], *sizes, fractions)


def test_plan_has_seeds_where_labels_are_scarce_and_both_lr_rules():
    runs = run.plan_runs(["scratch", "rmae", "rmae_ts"], [1.0, 0.05], seeds=3, seeds_at_full=1)
    assert runs[0].label_fraction == 0.05  # the small fractions first
    small = [r for r in runs if r.label_fraction == 0.05]
    assert {r.seed for r in small} == {0, 1, 2} and len(small) == 3 * 5
    assert {(r.arm, r.lr) for r in runs} == {("scratch", "uniform"), ("rmae", "differential"), ("rmae", "uniform"),
                                             ("rmae_ts", "differential"), ("rmae_ts", "uniform")}
    assert len({r.name for r in runs}) == len(runs)


def test_mean_std_and_pooled_std_match_hand_values():
    assert report.mean_std([1.0, 2.0, 3.0]) == (2.0, 1.0)
    assert math.isnan(report.mean_std([4.0])[1])
    # groups (1, 3) and (2, 4, 6): squared deviations 2 + 8 over 3 degrees of freedom
    assert report.pooled_std([1.0, 3.0], [2.0, 4.0, 6.0]) == pytest.approx(math.sqrt(10 / 3))


def test_difference_counts_only_above_twice_the_pooled_std():
    records = [dict(arm="scratch", lr="uniform", label_fraction=0.05, seed=s, mAP_3D=v, mAP_BEV=v)
               for s, v in enumerate([10.0, 11.0, 12.0])]
    records += [dict(arm="rmae", lr="differential", label_fraction=0.05, seed=s, mAP_3D=v, mAP_BEV=v)
                for s, v in enumerate([14.0, 15.0, 16.0])]  # +4, pooled std 1: counts
    records += [dict(arm="rmae", lr="uniform", label_fraction=0.05, seed=s, mAP_3D=v, mAP_BEV=v)
                for s, v in enumerate([11.0, 12.5, 14.0])]  # +1.5, pooled std ~1.27: does not count
    vs = report.compare_to_scratch(report.group(records))
    assert vs[("rmae", "differential", 0.05)][0] == pytest.approx(4.0) and vs[("rmae", "differential", 0.05)][2]
    assert vs[("rmae", "uniform", 0.05)][0] == pytest.approx(1.5) and not vs[("rmae", "uniform", 0.05)][2]
    table = report.markdown(records)
    assert "+4.00 ± 1.00 (yes)" in table and "(no)" in table


@pytest.mark.parametrize("frames, batch, iterations, epochs", [(20, 4, 400, 80), (200, 4, 400, 8), (7, 4, 10, 5),
                                                                (201, 4, 400, 8)])
def test_every_fraction_gets_at_least_the_same_optimiser_steps(frames, batch, iterations, epochs):
    assert run.finetune_epochs(frames, batch, iterations) == epochs
    steps = epochs * -(-frames // batch)
    assert iterations <= steps < iterations + -(-frames // batch)

"""benchmarks/first_step.py: each row runs in its own process with its own environment, the call timer
counts, times and hands back what it wraps, and on the CPU spconv does not tune."""
from __future__ import annotations

import time

import pytest

DEFAULT_SPLITK = [1, 2, 4, 8, 16, 32, 64]  # spconv/constants.py without SPCONV_BWD_SPLITK
SLEEP_S = 0.02


@pytest.fixture(scope="module")
def first_step(bench_module):
    return bench_module("first_step")


@pytest.fixture(scope="module")
def cpu_rows(first_step, tmp_path_factory):
    """``default`` and ``splitk1`` on the small grid (batch 1, one timed step) of the EMA-teacher step,
    each in a child process, started from a process whose own SPCONV_BWD_SPLITK must not reach
    ``default``."""
    frames = tmp_path_factory.mktemp("first_step") / "frames"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SPCONV_BWD_SPLITK", "2,4")
        results = first_step.main(["--small", "--device", "cpu", "--rows", "default", "splitk1",
                                   "--batch-size", "1", "--batches", "1", "--warmup", "0", "--steps", "1",
                                   "--model", "ema", "--data", str(frames), "--out", "-"])
    assert results["model"] == "ema"
    return {r["row"]: r for r in results["rows"]}


def test_cpu_row_has_first_and_steady_times_and_no_tuning(first_step, cpu_rows):
    row = cpu_rows["default"]
    assert "skipped" not in row, row.get("skipped")
    assert row["first_s"] > 0 and row["steady_ms"] > 0
    assert row["tuner"] == "none" and row["tune_calls"] == 0 and row["tune_s"] == 0
    # the conv timer does reach spconv's ops: the encoder's convs, forward and backward
    assert row["conv_first"]["calls"] > 0 and row["conv_first"]["seconds"] > 0
    assert row["conv_first"]["calls"] == row["conv_warm"]["calls"]
    # and the rule-book timer reaches spconv's pair builders (the CPU's native ones here)
    assert row["rules_warm"]["by_name"].get("get_indice_pairs", 0) > 0 and row["rules_warm"]["seconds"] > 0
    assert row["cpp_rulebooks"] is False
    # the host-time step sees every conv module, and inside them the builders and the forward ops
    host = row["host"]
    assert host["step_s"] > 0 and host["modules"]["calls"] == host["forward_ops"]["calls"] > 0
    assert host["backward_ops"]["calls"] > 0 and host["rulebooks"]["calls"] > 0
    assert all(name.endswith("_backward") for name in host["backward_ops"]["by_name"])
    assert not any(name.endswith("_backward") for name in host["forward_ops"]["by_name"])
    assert host["modules"]["seconds"] >= host["rulebooks"]["seconds"] + host["forward_ops"]["seconds"]
    assert host["step_s"] >= host["modules"]["seconds"] + host["backward_ops"]["seconds"]
    # the parts of train_step: each called once, nested where they should be
    for part in ("forward", "teacher", "masking", "decoder", "loss", "backward", "clip", "optimizer", "after_step"):
        assert host[part]["calls"] == 1, part
    assert host["encode"]["calls"] == 2  # the teacher's and the student's
    assert host["masking"]["by_name"] == {"__call__": 1}  # the masker's whole call, not a helper of it
    assert host["ts_loss"]["calls"] == 0  # the EMA row trains no teacher-student loss
    # nesting: all conv modules are part of the forward; the teacher's pass is one encoder pass and a small
    # projector, the encoder passes are its and the student's. (Under CPU load the teacher's non-conv work
    # can outweigh every conv call, so "modules >= teacher" held only on an idle machine.)
    assert host["forward"]["seconds"] >= host["modules"]["seconds"] > 0
    assert host["encode"]["seconds"] > host["teacher"]["seconds"] > 0
    # disjoint parts of the forward: the two encoder passes, masking, decoder, losses
    assert host["forward"]["seconds"] >= sum(host[k]["seconds"] for k in ("encode", "masking", "decoder", "loss"))
    assert host["backward"]["seconds"] >= host["backward_ops"]["seconds"]
    # the student's and the teacher's convs: the student's forward ops are the backward ops' count
    assert host["forward_ops"]["calls"] > host["backward_ops"]["calls"]
    parts = first_step.host_parts(host)
    assert 0 <= parts["rest"][0] < parts["step"][0]
    assert row["first_x_steady"] == pytest.approx(row["first_s"] * 1e3 / row["steady_ms"])
    assert row["first_vs_default"] == 1.0


def test_splitk1_child_reads_splitk_1_and_default_child_spconvs_own(cpu_rows):
    assert cpu_rows["splitk1"]["bwd_splitk"] == [1]
    assert cpu_rows["default"]["bwd_splitk"] == DEFAULT_SPLITK


class FakeTuner:
    """Stands for spconv.algo.SimpleConv: a method that takes a while and returns a fresh object."""

    def tune_and_cache(self, key):
        time.sleep(SLEEP_S)
        return (key, object())


@pytest.mark.parametrize("patch_class", [True, False])
def test_timed_calls_counts_times_returns_and_restores(first_step, patch_class):
    tuner, other = FakeTuner(), FakeTuner()
    original = FakeTuner.__dict__["tune_and_cache"]
    owner = FakeTuner if patch_class else tuner
    syncs = []
    tally = first_step.Tally()
    with first_step.timed_calls([(owner, "tune_and_cache")], tally, lambda: syncs.append(1)):
        results = [tuner.tune_and_cache(k) for k in range(3)]
        other.tune_and_cache(9)  # seen only through the class
    seen = 4 if patch_class else 3
    assert tally.calls == seen and tally.by_name == {"tune_and_cache": seen}
    assert seen * SLEEP_S <= tally.seconds < seen * SLEEP_S + 2.0
    assert len(syncs) == 2 * seen
    assert [r[0] for r in results] == [0, 1, 2]
    assert FakeTuner.__dict__["tune_and_cache"] is original
    assert "tune_and_cache" not in vars(tuner)


def test_timed_calls_returns_the_wrapped_result_unchanged(first_step):
    token = object()

    class Owner:
        @staticmethod
        def compute():
            return token

    holder = Owner()
    with first_step.timed_calls([(holder, "compute")], first_step.Tally()):
        assert holder.compute() is token


def test_timed_calls_restores_after_an_error_and_counts_the_failed_call(first_step):
    class Failing:
        def tune_and_cache(self):
            raise RuntimeError("no kernel")

    original = Failing.__dict__["tune_and_cache"]
    tally = first_step.Tally()
    with pytest.raises(RuntimeError, match="no kernel"):
        with first_step.timed_calls([(Failing, "tune_and_cache")], tally):
            Failing().tune_and_cache()
    assert tally.calls == 1
    assert Failing.__dict__["tune_and_cache"] is original


def test_child_env_sets_each_rows_spconv_variable_and_nothing_of_the_callers(first_step):
    caller = {"PATH": "/bin", "SPCONV_BWD_SPLITK": "8", "SPCONV_CPP_INDICE_PAIRS_IGEMM": "1"}
    assert first_step.child_env("splitk1", caller) == {"PATH": "/bin", "SPCONV_BWD_SPLITK": "1"}
    assert first_step.child_env("igemm_cpp", caller) == {"PATH": "/bin", "SPCONV_CPP_INDICE_PAIRS_IGEMM": "1"}
    assert first_step.child_env("default", caller) == {"PATH": "/bin"}
    assert caller["SPCONV_BWD_SPLITK"] == "8"


def test_tuner_targets_are_the_classes_of_the_objects_spconv_ops_calls(first_step):
    ops = pytest.importorskip("spconv.pytorch.ops")
    targets = first_step.tune_targets()
    if ops.CONV is None:  # CPU-only build: spconv.algo does not import, nothing tunes
        assert targets == []
        return
    classes = [owner for owner, _ in targets]
    assert isinstance(ops.CONV, classes[0]) and isinstance(ops.GEMM, classes[1])
    assert all("tune_and_cache" in vars(c) for c in classes)


def test_ratios_against_the_default_row_and_dashes_for_an_unseen_tuner(first_step):
    conv = {"calls": 2, "seconds": 0.5, "by_name": {}}
    rows = [{"row": "default", "tuner": "c++", "first_s": 2.0, "steady_ms": 100.0, "tune_calls": None,
             "tune_s": None, "conv_first": conv, "conv_warm": conv, "rules_warm": conv},
            {"row": "py_tuner", "tuner": "python", "first_s": 1.0, "steady_ms": 80.0, "tune_calls": 12,
             "tune_s": 0.25, "conv_first": conv, "conv_warm": conv, "rules_warm": conv},
            {"row": "amp", "skipped": "amp needs CUDA"}]
    first_step.add_ratios(rows)
    assert rows[0]["first_x_steady"] == pytest.approx(20.0) and rows[0]["first_vs_default"] == 1.0
    assert rows[1]["first_x_steady"] == pytest.approx(12.5) and rows[1]["first_vs_default"] == 0.5
    assert rows[0]["steady_vs_default"] == 1.0 and rows[1]["steady_vs_default"] == pytest.approx(0.8)
    lines = first_step.table(rows).splitlines()
    assert lines[1].split()[5:7] == ["-", "-"] and lines[2].split()[5:7] == ["12", "0.25"]
    assert "skipped" in lines[3]


def test_host_parts_rest_is_the_step_less_the_top_level_parts_and_the_table_lists_every_part(first_step):
    def part(ms, calls):
        return {"seconds": ms / 1e3, "calls": calls, "by_name": {}}

    host = {"step_s": 0.100, "forward": part(40, 1), "teacher": part(15, 1), "modules": part(30, 64),
            "rulebooks": part(10, 28), "forward_ops": part(12, 64), "backward": part(30, 1),
            "backward_ops": part(20, 32), "clip": part(2, 1), "optimizer": part(8, 1), "after_step": part(5, 1)}
    parts = first_step.host_parts(host)
    assert parts["rest"][0] == pytest.approx(100 - 40 - 30 - 2 - 8 - 5)  # nested parts not subtracted
    assert parts["teacher"] == (pytest.approx(15), 1) and parts["step"] == (pytest.approx(100), None)
    lines = first_step.host_table([{"row": "default", "host": host}, {"row": "amp", "skipped": "no"}]).splitlines()
    assert lines[0].split() == ["part", "default"]
    assert [ln.split()[-1] for ln in lines[1:3]] == ["100.0", "(1)"]
    assert lines[-1].split()[-1] == "15.0"  # the rest
    assert len(lines) == 1 + len(first_step.HOST_PARTS)
    assert first_step.host_table([{"row": "amp", "skipped": "no"}]).startswith("no row has a host time")


def test_device_column_sits_beside_its_row_and_its_rest_is_the_kernels_outside_the_top_level_parts(first_step):
    host = {"step_s": 0.100, "forward": {"seconds": 0.06, "calls": 1, "by_name": {}}}
    device_ms = {"total": 80.0, "forward": 30.0, "teacher": 12.0, "backward": 0.5, "clip": 1.0,
                 "optimizer": 3.0, "after_step": 1.5}
    parts = first_step.device_parts(device_ms)
    assert parts["step"] == (80.0, None) and parts["teacher"] == (12.0, None)
    assert parts["rest"][0] == pytest.approx(80 - 30 - 0.5 - 1 - 3 - 1.5)  # the teacher lies inside the forward
    lines = first_step.host_table([{"row": "amp", "host": host, "device_ms": device_ms},
                                   {"row": "default", "host": host, "device_ms": None}]).splitlines()
    assert lines[0].split() == ["part", "amp", "amp", "device", "default"]
    assert lines[1].split()[-3:] == ["100.0", "80.0", "100.0"]  # whole step: host, device, host
    assert lines[-1].split()[-2] == "44.0"  # the device's rest


def test_kernel_time_counts_device_work_once_and_no_host_op(bench_module):
    """The floor sums kernels, copies and fills; a range the profiler also draws on the GPU timeline
    spans kernels already counted, and host ops are not device work."""
    from torch.autograd import DeviceType
    from torch.autograd.profiler_util import FunctionEvent

    def event(name, start, end, device_type, annotation=False):
        return FunctionEvent(0, name, 0, start, end, device_type=device_type, is_user_annotation=annotation)

    events = [event("cumm::conv::main::Ampere_f16", 0, 100, DeviceType.CUDA),
              event("Memset (Device)", 100, 120, DeviceType.CUDA),
              event("Optimizer.step#AdamW.step", 0, 150, DeviceType.CUDA, annotation=True),
              event("aten::add_", 0, 300, DeviceType.CPU)]
    assert bench_module("bench_pretrain").kernel_ms(events) == pytest.approx(0.12)

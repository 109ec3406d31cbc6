"""benchmarks/saved_tensors.py: bytes kept for the backward pass go to the innermost labelled part, once per storage."""
from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module")
def saved_tensors(bench_module):
    return bench_module("saved_tensors")


def test_bytes_go_to_the_innermost_part_once_per_storage(saved_tensors):
    saved = saved_tensors.SavedBytes()
    weight = torch.randn(32, 64, requires_grad=True)
    inner = saved.labelled("inner", torch.relu)  # saves its (100, 32) output

    def outer(x):
        y = x @ weight.t()  # saves x (100, 64) and the weight (32, 64)
        return inner(y) * y  # saves relu's output (counted under "inner" already) and y (100, 32)

    x = torch.randn(100, 64, requires_grad=True)
    with saved.recording():
        saved.labelled("outer", outer)(x).sum().backward()
    assert saved.by_part == {"inner": 100 * 32 * 4, "outer": (100 * 64 + 32 * 64 + 100 * 32) * 4}

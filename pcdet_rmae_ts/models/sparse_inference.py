"""spconv's inference path for a no-grad pass of train-mode modules (the teacher's forward).

A train-mode spconv conv builds submanifold rule-books with their backward pairs, runs its
kernel through an autograd Function and adds the bias in a second kernel; a pass that never
backpropagates uses none of that. Only the convs switch: BatchNorm keeps its batch statistics.
"""
from __future__ import annotations

import contextlib
import functools
from typing import Iterator

import torch
from torch import nn

from ..compat import import_spconv

SparseConvolution = import_spconv().conv.SparseConvolution


def inference_forward(conv, x):
    """One conv on spconv's inference path (``conv.training`` is False).

    Under CUDA autocast, spconv's training path runs the conv in float16: its autograd Function
    casts features, weight and bias (``custom_fwd(cast_inputs=torch.float16)``). The inference
    path calls the kernel directly, in the weight's dtype, so the casts are made here."""
    if not x.features.is_cuda:
        return type(conv).forward(conv, x)  # through the CPU shim (compat.py), which adds the bias
    weight, bias = conv.weight, conv.bias
    if torch.is_autocast_enabled():
        x, weight = x.replace_feature(x.features.half()), weight.half()
        bias = None if bias is None else bias.half()
    return conv._conv_forward(False, x, weight, bias, name=conv.name, sparse_unique_name=conv._sparse_unique_name,
                              act_type=conv.act_type, act_alpha=conv.act_alpha, act_beta=conv.act_beta)


@contextlib.contextmanager
def inference_convs(module: nn.Module) -> Iterator[None]:
    """Run every train-mode spconv conv of ``module`` on :func:`inference_forward` (use under
    ``torch.no_grad()``); their modes and forwards are restored on exit."""
    convs = [m for m in module.modules() if isinstance(m, SparseConvolution) and m.training]
    for conv in convs:
        conv.training = False
        conv.forward = functools.partial(inference_forward, conv)
    try:
        yield
    finally:
        for conv in convs:
            conv.training = True
            del conv.forward

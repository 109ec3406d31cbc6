"""The spconv import (with a clear install hint) and the spconv-on-CPU shim, in one place.

spconv 2.x is written for CUDA; four of its CPU paths are broken (found with
spconv 2.3.8 on a CPU-only torch, see ``tests/data/README.md``):

1. **Backward on a CPU-only torch** calls ``torch.cuda.current_stream()`` and
   raises "Torch not compiled with CUDA enabled". Fix: where CUDA is not
   usable, spconv's stream getter returns the null stream ``0`` (what spconv
   itself passes for CPU tensors in its forward).
2. **Strided convs race with more than one CPU thread** (wrong outputs in about
   half of identical runs). Fix: every spconv kernel that receives CPU tensors
   runs with ``torch.set_num_threads(1)``; the previous count is restored.
   GPU calls are untouched.
3. **Eval-mode convs with a bias fail on the CPU** ("cpu don't support act and
   bias": in eval mode spconv fuses the bias into its CPU kernel, which cannot).
   Fix: for CPU inputs in eval mode the conv runs without the bias and adds it
   afterwards, which is exactly what spconv does in train mode.
4. **CPU tensors with a CUDA build of spconv** ("implicit gemm only support cuda"):
   CUDA builds give every conv the implicit-GEMM algorithm, which has no CPU kernel,
   so ``--device cpu`` on a GPU machine fails. Fix: convs called with CPU tensors use
   spconv's native algorithm for that call (weights have the same layout for both).

``apply_spconv_cpu_fixes()`` installs all four; it is idempotent and is called
when the encoder is imported. ``spconv_cpu_fixes_installed()`` reports it. Setting
``PCDET_RMAE_TS_NO_SPCONV_FIXES=1`` leaves spconv untouched (to reproduce the faults).
"""
from __future__ import annotations

import functools
import importlib
import os
from typing import Any, Callable

import torch

_INSTALLED = False

# spconv.pytorch.ops functions that run CPU kernels (forward and backward).
_THREAD_SENSITIVE_OPS = (
    "get_indice_pairs",
    "get_indice_pairs_implicit_gemm",
    "indice_conv",
    "indice_conv_backward",
    "implicit_gemm",
    "implicit_gemm_backward",
    "indice_maxpool",
    "indice_maxpool_backward",
    "indice_maxpool_implicit_gemm",
    "indice_maxpool_implicit_gemm_backward",
)

SPCONV_INSTALL_HINT = (
    "spconv 2.x is required but not installed. Install the build that matches "
    "your torch: `pip install -e \".[cpu]\"` (CPU), or one of the extras "
    "[cu118], [cu120], [cu121], [cu124], [cu126] (e.g. `pip install -e \".[cu121]\"`)."
)


def import_spconv():
    """Return ``spconv.pytorch`` or raise an ImportError that says how to install it."""
    try:
        return importlib.import_module("spconv.pytorch")
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(SPCONV_INSTALL_HINT) from err


def _first_tensor(args: tuple, kwargs: dict) -> torch.Tensor | None:
    for value in list(args) + list(kwargs.values()):
        if isinstance(value, torch.Tensor):
            return value
    return None


def _single_threaded_on_cpu(fn: Callable) -> Callable:
    """Wrap an spconv op so that CPU calls run with one torch thread (fix 2)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any):
        tensor = _first_tensor(args, kwargs)
        if tensor is None or tensor.is_cuda:
            return fn(*args, **kwargs)
        threads = torch.get_num_threads()
        if threads == 1:
            return fn(*args, **kwargs)
        torch.set_num_threads(1)
        try:
            return fn(*args, **kwargs)
        finally:
            torch.set_num_threads(threads)

    wrapper.__rmae_cpu_fix__ = True
    return wrapper


def _null_stream_without_cuda(fn: Callable) -> Callable:
    """spconv's ``get_current_stream`` that returns 0 when CUDA is unusable (fix 1)."""

    @functools.wraps(fn)
    def wrapper():
        if torch.cuda.is_available():
            return fn()
        return 0

    wrapper.__rmae_cpu_fix__ = True
    return wrapper


def _cpu_safe_conv_forward(forward: Callable) -> Callable:
    """``SparseConvolution.forward`` for CPU tensors: native algorithm (fix 4) and, in eval mode,
    the bias added after the conv (fix 3). CUDA tensors take spconv's own path unchanged."""
    native = importlib.import_module("spconv.core").ConvAlgo.Native

    @functools.wraps(forward)
    def wrapper(self, input, add_input=None):
        if input.features.is_cuda:
            return forward(self, input, add_input)
        algo = self.algo
        self.algo = native
        try:
            if self.training or self.bias is None:
                return forward(self, input, add_input)
            out = self._conv_forward(
                False, input, self.weight, None, add_input,
                name=self.name, sparse_unique_name=self._sparse_unique_name,
                act_type=self.act_type, act_alpha=self.act_alpha, act_beta=self.act_beta,
            )
            return out.replace_feature(out.features + self.bias)
        finally:
            self.algo = algo

    wrapper.__rmae_cpu_fix__ = True
    return wrapper


def _patch(module: Any, name: str, make: Callable[[Callable], Callable]) -> None:
    current = getattr(module, name)
    if not getattr(current, "__rmae_cpu_fix__", False):
        setattr(module, name, make(current))


def apply_spconv_cpu_fixes() -> None:
    """Install the four CPU fixes into spconv (idempotent, no effect on GPU calls)."""
    global _INSTALLED
    if _INSTALLED or os.environ.get("PCDET_RMAE_TS_NO_SPCONV_FIXES") == "1":
        return
    import_spconv()
    cppcore = importlib.import_module("spconv.pytorch.cppcore")
    ops = importlib.import_module("spconv.pytorch.ops")
    conv = importlib.import_module("spconv.pytorch.conv")
    # Modules that imported get_current_stream by name hold their own reference.
    for module_name in ("spconv.pytorch.cppcore", "spconv.pytorch.ops", "spconv.pytorch.hash"):
        module = importlib.import_module(module_name)
        if hasattr(module, "get_current_stream"):
            _patch(module, "get_current_stream", _null_stream_without_cuda)
    del cppcore
    for name in _THREAD_SENSITIVE_OPS:
        if hasattr(ops, name):
            _patch(ops, name, _single_threaded_on_cpu)
    _patch(conv.SparseConvolution, "forward", _cpu_safe_conv_forward)
    _INSTALLED = True


def spconv_cpu_fixes_installed() -> bool:
    return _INSTALLED

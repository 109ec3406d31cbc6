"""The spconv-on-CPU shim: each fix has a test that fails without it."""
from __future__ import annotations

import importlib

import pytest
import torch
import torch.nn.functional as F

from pcdet_rmae_ts import compat

spconv = compat.import_spconv()
compat.apply_spconv_cpu_fixes()


def _random_sparse(seed: int, n: int = 3000, size: int = 24, channels: int = 4, batch: int = 2):
    gen = torch.Generator().manual_seed(seed)
    coords = torch.cat([torch.randint(0, batch, (n, 1), generator=gen),
                        torch.randint(0, size, (n, 3), generator=gen)], 1)
    coords = torch.unique(coords, dim=0).int()
    features = torch.randn(coords.shape[0], channels, generator=gen)
    return spconv.SparseConvTensor(features, coords, [size] * 3, batch)


def _dense_reference(x, weight: torch.Tensor, stride: int, padding: int) -> torch.Tensor:
    """Dense conv3d of the densified input; spconv weights are [out, kz, ky, kx, in]."""
    dense = x.dense()  # (B, C, Z, Y, X)
    return F.conv3d(dense, weight.permute(0, 4, 1, 2, 3), stride=stride, padding=padding)


def test_fixes_are_installed_once_and_marked():
    ops = importlib.import_module("spconv.pytorch.ops")
    before = ops.indice_conv
    compat.apply_spconv_cpu_fixes()
    assert ops.indice_conv is before
    assert getattr(ops.indice_conv, "__rmae_cpu_fix__", False)
    assert compat.spconv_cpu_fixes_installed()


def test_strided_conv_matches_dense_conv_30_times_with_threads():
    """Fix 2: with >1 torch thread the raw spconv CPU strided conv races."""
    torch.set_num_threads(max(2, torch.get_num_threads()))
    torch.manual_seed(0)
    conv = spconv.SparseConv3d(4, 8, 3, stride=2, padding=1, bias=False)
    x = _random_sparse(1)
    with torch.no_grad():
        reference = _dense_reference(x, conv.weight, 2, 1)
        for _ in range(30):
            out = conv(x).dense()
            torch.testing.assert_close(out, reference, rtol=1e-4, atol=1e-4)


def test_thread_count_is_restored():
    torch.set_num_threads(2)
    conv = spconv.SubMConv3d(4, 4, 3, padding=1)
    with torch.no_grad():
        conv(_random_sparse(2))
    assert torch.get_num_threads() == 2


@pytest.mark.skipif(torch.cuda.is_available(), reason="fix 1 concerns torch builds without usable CUDA")
def test_backward_through_subm_strided_and_inverse_convs_on_cpu():
    """Fix 1: spconv's backward asks torch.cuda for a stream."""
    net = spconv.SparseSequential(
        spconv.SubMConv3d(4, 8, 3, padding=1, bias=True, indice_key="subm"),
        spconv.SparseConv3d(8, 8, 3, stride=2, padding=1, indice_key="down"),
        spconv.SparseInverseConv3d(8, 4, 3, indice_key="down"),
    )
    x = _random_sparse(3)
    x.features.requires_grad_(True)
    net(x).features.square().sum().backward()
    assert x.features.grad is not None and x.features.grad.abs().sum() > 0
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())


def test_backward_gradient_matches_dense_conv():
    torch.manual_seed(1)
    conv = spconv.SparseConv3d(4, 6, 3, stride=2, padding=1, bias=False)
    x = _random_sparse(4, n=800, size=12)
    features = x.features.clone().requires_grad_(True)
    out = conv(x.replace_feature(features)).dense()
    grad_out = torch.randn_like(out)
    (out * grad_out).sum().backward()
    dense_in = x.dense().detach().requires_grad_(True)
    ref = F.conv3d(dense_in, conv.weight.detach().permute(0, 4, 1, 2, 3), stride=2, padding=1)
    (ref * grad_out).sum().backward()
    b, z, y, xx = x.indices.long().unbind(1)
    torch.testing.assert_close(features.grad, dense_in.grad[b, :, z, y, xx], rtol=1e-4, atol=1e-4)


def test_eval_mode_conv_with_bias_on_cpu_equals_train_mode():
    """Fix 3: eval-mode biased convs fail in spconv's CPU kernel."""
    conv = spconv.SubMConv3d(4, 8, 3, padding=1, bias=True)
    torch.nn.init.uniform_(conv.bias, -1, 1)
    x = _random_sparse(5)
    with torch.no_grad():
        conv.train()
        expected = conv(x).features
        conv.eval()
        got = conv(x).features
    torch.testing.assert_close(got, expected)


def test_missing_spconv_message_names_the_extras():
    assert "[cpu]" in compat.SPCONV_INSTALL_HINT and "cu121" in compat.SPCONV_INSTALL_HINT


def _run_python(code: str):
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=repo, timeout=120)


def test_missing_spconv_gives_a_clear_import_error():
    result = _run_python(
        "import sys; sys.modules['spconv'] = None\n"
        "try:\n    import pcdet_rmae_ts.models.encoder\n"
        "except ImportError as err:\n    print('MSG', err)\n")
    assert "MSG spconv 2.x is required" in result.stdout and "[cu121]" in result.stdout, result.stderr


def test_importing_the_package_imports_neither_spconv_nor_pcdet():
    result = _run_python("import sys, pcdet_rmae_ts; print(sorted(m for m in sys.modules "
                         "if m.split('.')[0] in ('spconv', 'pcdet')))")
    assert result.stdout.strip() == "[]", result.stdout + result.stderr


@pytest.mark.skipif(not torch.cuda.is_available(), reason="fix 4 concerns CUDA builds of spconv (GPU machine)")
def test_cpu_tensors_run_with_a_cuda_build_of_spconv():
    """Fix 4: CUDA builds default to implicit GEMM, which has no CPU kernel."""
    net = spconv.SparseSequential(spconv.SubMConv3d(4, 8, 3, padding=1, indice_key="a"),
                                  spconv.SparseConv3d(8, 8, 3, stride=2, padding=1))
    x = _random_sparse(6)
    x.features.requires_grad_(True)
    cpu_out = net(x)
    cpu_out.features.sum().backward()
    gpu_net = net.cuda()
    gpu_x = spconv.SparseConvTensor(x.features.detach().cuda(), x.indices.cuda(), x.spatial_shape, x.batch_size)
    with torch.no_grad():
        torch.testing.assert_close(gpu_net(gpu_x).dense().cpu(), cpu_out.dense().detach(), rtol=1e-3, atol=1e-3)

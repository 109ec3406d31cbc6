"""The teacher's no-grad pass takes spconv's inference path (models/sparse_inference.py): same features
as the training path, only for the teacher's convs, and the modules are left as they were."""
from __future__ import annotations

import pytest
import torch

from pcdet_rmae_ts.models.encoder import VoxelNeXtEncoder
from pcdet_rmae_ts.models.sparse_inference import SparseConvolution, inference_convs
from pcdet_rmae_ts.sparse_align import site_keys

GRID = [160, 160, 24]  # x, y, z

CUDA = pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(),
                                                     reason="spconv's implicit-GEMM path needs a CUDA device"))


def random_voxels(seed: int, device: str, batch: int = 2, n: int = 4000):
    gen = torch.Generator().manual_seed(seed)
    sites = torch.stack([torch.randint(0, batch, (n,), generator=gen)]
                        + [torch.randint(0, s, (n,), generator=gen) for s in (GRID[2], GRID[1], GRID[0])], 1)
    sites = torch.unique(sites, dim=0).int()
    return torch.randn(sites.shape[0], 4, generator=gen).to(device), sites.to(device)


def encoder(device: str) -> VoxelNeXtEncoder:
    torch.manual_seed(0)
    model = VoxelNeXtEncoder(4, GRID).to(device).train()
    with torch.no_grad():  # biases away from their zero init, so that a dropped bias shows
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.uniform_(-0.5, 0.5)
    return model


def encode(model, features, coords, inference: bool, amp: bool = False) -> dict:
    with torch.no_grad(), torch.autocast("cuda", enabled=amp):
        if not inference:
            return model.encode(features, coords, 2)
        with inference_convs(model):
            return model.encode(features, coords, 2)


def outputs(out: dict) -> dict:
    """(indices, features) of every output in a canonical row order: on CUDA a strided conv's output
    rows come in a different order from call to call. A stable sort by site keeps x_conv4's stacked
    conv4/conv5/conv6 rows of one site in stage order."""
    tensors = dict(out["multi_scale_3d_features"], bev=out["encoded_spconv_tensor"])
    result = {}
    for name, t in tensors.items():
        order = torch.sort(site_keys(t.indices, t.spatial_shape), stable=True)[1]
        result[name] = (t.indices[order], t.features[order])
    return result


@pytest.mark.parametrize("device", ["cpu", CUDA])
@pytest.mark.parametrize("seed", [0, 1])
def test_inference_path_gives_the_training_path_features(device, seed):
    model = encoder(device)
    features, coords = random_voxels(seed, device)
    reference = outputs(encode(model, features, coords, inference=False))
    got = outputs(encode(model, features, coords, inference=True))
    for name, (indices, feats) in reference.items():
        assert torch.equal(got[name][0], indices), name
        torch.testing.assert_close(got[name][1], feats, rtol=1e-4, atol=1e-4, msg=name)


def relative_error(got: dict, reference: dict) -> dict:
    """Per output: ||got - reference|| / ||reference|| (features in the canonical row order)."""
    return {name: float((got[name][1].float() - feats.float()).norm() / feats.float().norm())
            for name, (_, feats) in reference.items()}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="autocast's float16 convs need a CUDA device")
def test_inference_path_under_autocast_runs_float16_as_accurately_as_the_training_path():
    """Against the float32 features, the inference path under autocast errs no more than autocast's
    training path does (its kernels and its bias rounding differ, so the float16 errors differ)."""
    model = encoder("cuda")
    features, coords = random_voxels(0, "cuda")
    exact = outputs(encode(model, features, coords, inference=False))
    training = encode(model, features, coords, inference=False, amp=True)
    inference = encode(model, features, coords, inference=True, amp=True)
    for name, (indices, feats) in outputs(inference).items():
        assert feats.dtype == torch.float16, name
        assert torch.equal(indices, exact[name][0]), name
    err_training = relative_error(outputs(training), exact)
    err_inference = relative_error(outputs(inference), exact)
    for name in exact:
        assert err_inference[name] <= 1.5 * err_training[name] + 1e-3, (name, err_inference, err_training)
    # the inference path builds a submanifold rule-book without its backward pairs
    assert inference["multi_scale_3d_features"]["x_conv1"].indice_dict["res1"].pair_bwd.numel() == 0
    assert training["multi_scale_3d_features"]["x_conv1"].indice_dict["res1"].pair_bwd.numel() > 0


def test_modules_are_restored_when_the_pass_fails():
    model = encoder("cpu")
    with pytest.raises(RuntimeError, match="boom"):
        with inference_convs(model):
            raise RuntimeError("boom")
    convs = [m for m in model.modules() if isinstance(m, SparseConvolution)]
    assert convs and all(m.training and "forward" not in vars(m) for m in convs)
    with inference_convs(model.eval()):  # convs already in eval mode are not touched, nor switched back
        pass
    assert not any(m.training for m in convs)

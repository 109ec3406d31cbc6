"""The batched VoxelNeXt target assignment (pcdet_rmae_ts.voxel_targets) against a box-by-box reference
written from VoxelNeXtHead's definition: the same tensors, bit for bit. The comparison with OpenPCDet's
own method runs in tests/test_integration_pcdet.py where pcdet and CUDA are present."""
from __future__ import annotations

import math

import pytest
import torch

from pcdet_rmae_ts import voxel_targets
from pcdet_rmae_ts.voxel_targets import assign_single_head

PC_RANGE = torch.tensor([-70.4, -70.4, -6.0, 70.4, 70.4, 10.0])
VOXEL = torch.tensor([0.1, 0.1, 0.2])
STRIDE = 8
SHAPE = [176, 176]  # BEV cells (y, x) at stride 8


def reference(gt_boxes, radius, num_classes, num_voxels, spatial_indices, num_max_objs, gaussian_type, ratio,
              shape=SHAPE):
    """One box at a time, the way VoxelNeXtHead defines the targets."""
    heatmap = gt_boxes.new_zeros(num_classes, num_voxels)
    ret = gt_boxes.new_zeros((num_max_objs, gt_boxes.shape[-1]))
    inds = gt_boxes.new_zeros(num_max_objs).long()
    mask = gt_boxes.new_zeros(num_max_objs).long()
    for k in range(min(num_max_objs, gt_boxes.shape[0])):
        box = gt_boxes[k]
        cx = torch.clamp((box[0] - PC_RANGE[0]) / VOXEL[0] / STRIDE, min=0, max=shape[1] - 0.5)
        cy = torch.clamp((box[1] - PC_RANGE[1]) / VOXEL[1] / STRIDE, min=0, max=shape[0] - 0.5)
        center = torch.stack((cx, cy))
        ci = center.int()
        dx, dy = box[3] / VOXEL[0] / STRIDE, box[4] / VOXEL[1] / STRIDE
        if dx <= 0 or dy <= 0 or not (0 <= ci[0] <= shape[1] and 0 <= ci[1] <= shape[0]):
            continue
        cls = int(box[-1]) - 1
        d_center = ((spatial_indices - center[None]) ** 2).sum(-1)
        inds[k] = d_center.argmin()
        mask[k] = 1
        sigma = (2 * (int(radius[k]) * ratio) + 1) / 6
        if "gt_center" in gaussian_type:
            torch.max(heatmap[cls], torch.exp(-d_center / (2 * sigma * sigma)), out=heatmap[cls])
        if "nearst" in gaussian_type:
            d_near = ((spatial_indices - spatial_indices[inds[k]][None]) ** 2).sum(-1)
            torch.max(heatmap[cls], torch.exp(-d_near / (2 * sigma * sigma)), out=heatmap[cls])
        ret[k, 0:2] = center - spatial_indices[inds[k]][:2]
        ret[k, 2] = box[2]
        ret[k, 3:6] = box[3:6].log()
        ret[k, 6], ret[k, 7] = torch.cos(box[6]), torch.sin(box[6])
        if gt_boxes.shape[1] > 8:
            ret[k, 8:] = box[7:-1]
    return heatmap, ret, inds, mask


def scene(seed, num_boxes=40, num_voxels=3000, extras=0, num_classes=4):
    g = torch.Generator().manual_seed(seed)
    cells = torch.randperm(SHAPE[0] * SHAPE[1], generator=g)[:num_voxels]
    spatial_indices = torch.stack((cells % SHAPE[1], cells // SHAPE[1]), dim=-1).int()
    xy = (torch.rand(num_boxes, 2, generator=g) * 150 - 75)  # some centres beyond the range: clamped
    z = torch.rand(num_boxes, 1, generator=g) * 4 - 2
    dims = torch.rand(num_boxes, 3, generator=g) * 8 + 1.5
    heading = (torch.rand(num_boxes, 1, generator=g) * 2 - 1) * math.pi
    extra = torch.randn(num_boxes, extras, generator=g)
    cls = torch.randint(1, num_classes + 1, (num_boxes, 1), generator=g).float()
    boxes = torch.cat((xy, z, dims, heading, extra, cls), dim=1)
    boxes[3 % num_boxes, 3] = 0.0  # a box without length gets no target
    boxes[5 % num_boxes, 4] = -1.0
    radius = torch.clamp_min(torch.randint(0, 9, (num_boxes,), generator=g).int(), 2)
    return boxes, radius, spatial_indices


def run_both(boxes, radius, spatial_indices, num_max_objs=500, gaussian_type=("nearst", "gt_center"), ratio=1,
             num_classes=4, shape=SHAPE):
    args = (boxes, radius, num_classes, spatial_indices.shape[0], spatial_indices)
    fast = assign_single_head(*args, shape, PC_RANGE, VOXEL, STRIDE, num_max_objs=num_max_objs,
                              gaussian_type=gaussian_type, gaussian_ratio=ratio)
    slow = reference(*args, num_max_objs, gaussian_type, ratio, shape)
    return fast, slow


def assert_identical(fast, slow):
    for name, a, b in zip(("heatmap", "ret_boxes", "inds", "mask"), fast, slow):
        assert a.dtype == b.dtype and a.shape == b.shape, name
        assert torch.equal(a, b), f"{name} differs: max |diff| {(a.double() - b.double()).abs().max()}"


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_batched_targets_equal_the_box_by_box_definition(seed):
    fast, slow = run_both(*scene(seed))
    assert_identical(fast, slow)
    heatmap, _, _, mask = fast
    assert 0 < int(mask.sum()) < 40 and mask[3] == 0 and mask[5] == 0  # sizeless boxes skipped
    assert heatmap.max() == 1.0  # a Gaussian peaks on the voxel nearest to each box


def test_chunks_of_boxes_and_velocity_columns_and_box_cap(monkeypatch):
    monkeypatch.setattr(voxel_targets, "BOX_CHUNK", 7)  # several chunks with a ragged last one
    boxes, radius, indices = scene(3, num_boxes=50, extras=2)
    fast, slow = run_both(boxes, radius, indices, num_max_objs=33)  # boxes past the cap get nothing
    assert_identical(fast, slow)
    assert fast[1].shape == (33, 10) and fast[1][:, 8:].abs().sum() > 0


def test_a_grid_longer_in_x_than_in_y_clamps_each_axis_to_its_own_size():
    boxes, radius, indices = scene(6, num_boxes=60)
    shape = [96, 176]  # (y, x): boxes beyond y = 96 cells are clamped there, x keeps its 176
    indices = indices[indices[:, 1] < shape[0]]
    fast, slow = run_both(boxes, radius, indices, shape=shape)
    assert_identical(fast, slow)


@pytest.mark.parametrize("gaussian_type, ratio", [(("gt_center",), 1), (("nearst",), 1), (("nearst", "gt_center"), 2)])
def test_each_gaussian_kind_and_ratio(gaussian_type, ratio):
    fast, slow = run_both(*scene(4), gaussian_type=gaussian_type, ratio=ratio)
    assert_identical(fast, slow)


def test_ties_take_the_first_voxel_and_classes_keep_their_own_heatmap():
    # voxels 0 and 2 share a cell, so they tie for the first box; argmin's rule is the first one
    indices = torch.tensor([[12, 10], [10, 10], [12, 10], [11, 30]], dtype=torch.int32)
    x = PC_RANGE[0] + 11.6 * VOXEL[0] * STRIDE  # centre about (11.6, 10.2): nearest cell (12, 10)
    y = PC_RANGE[1] + 10.2 * VOXEL[1] * STRIDE
    boxes = torch.tensor([[x, y, 0.0, 4.0, 2.0, 2.0, 0.3, 2.0],
                          [x, y + 20 * VOXEL[1] * STRIDE, 0.0, 4.0, 2.0, 2.0, 0.3, 3.0]])
    radius = torch.tensor([2, 2], dtype=torch.int32)
    fast, slow = run_both(boxes, radius, indices)
    assert_identical(fast, slow)
    heatmap, ret, inds, mask = fast
    assert inds[:2].tolist() == [0, 3] and mask[:2].tolist() == [1, 1]
    assert heatmap[0].abs().sum() == 0 and heatmap[3].abs().sum() == 0  # classes 1 and 4 have no box
    assert heatmap[1, 0] == 1.0 and heatmap[1, 0] > heatmap[1, 1] > heatmap[1, 3]
    assert heatmap[2, 3] == 1.0 and heatmap[2, 3] > heatmap[2, 0]
    assert torch.allclose(ret[0, :2], torch.tensor([-0.4, 0.2]), atol=1e-3)


def test_no_boxes_and_no_valid_boxes_give_empty_targets():
    boxes, radius, indices = scene(5, num_boxes=4)
    for empty in (boxes[:0], torch.cat((boxes[:, :3], boxes[:, 3:6] * 0, boxes[:, 6:]), dim=1)):
        fast, slow = run_both(empty, radius[:empty.shape[0]], indices)
        assert_identical(fast, slow)
        assert fast[0].abs().sum() == 0 and fast[3].sum() == 0


def _openpcdet_source():
    """OpenPCDet's source tree: ``PCDET_SOURCE`` (the folder holding ``pcdet/``) or an importable pcdet's."""
    import importlib.util
    import os
    from pathlib import Path

    if os.environ.get("PCDET_SOURCE"):
        return Path(os.environ["PCDET_SOURCE"]) / "pcdet"
    spec = importlib.util.find_spec("pcdet")
    return Path(spec.origin).parent if spec and spec.origin else None


def _stock_functions(pcdet_dir, module, names):
    """Functions of one OpenPCDet source file, compiled from its text alone (no pcdet import, no CUDA)."""
    import ast
    import textwrap

    text = (pcdet_dir / module).read_text()
    found = {}
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.FunctionDef) and node.name in names:
            scope = {"torch": torch, "np": __import__("numpy")}
            exec(textwrap.dedent(ast.get_source_segment(text, node)), scope)
            found[node.name] = scope[node.name]
    return found


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_batched_targets_equal_openpcdets_own_loop_on_cpu(seed):
    """OpenPCDet's ``assign_target_of_single_head`` and ``gaussian_radius`` compiled from its source text and
    run on the CPU, against the launcher's hook on the same head: identical tensors."""
    import types

    from pcdet_rmae_ts.integration import pcdet as integ

    pcdet_dir = _openpcdet_source()
    if pcdet_dir is None or not (pcdet_dir / "models" / "dense_heads" / "voxelnext_head.py").is_file():
        pytest.skip("needs OpenPCDet's source: set PCDET_SOURCE to the folder that holds pcdet/ (no build needed)")
    utils = types.SimpleNamespace(**_stock_functions(pcdet_dir, "models/model_utils/centernet_utils.py",
                                                     {"gaussian_radius", "draw_gaussian_to_heatmap_voxels"}))
    stock = {}
    for name, fn in _stock_functions(pcdet_dir, "models/dense_heads/voxelnext_head.py",
                                     {"assign_target_of_single_head", "distance"}).items():
        fn.__globals__["centernet_utils"] = utils
        stock[name] = fn
    module = types.ModuleType("stock_voxelnext_head")
    module.centernet_utils = utils
    module.VoxelNeXtHead = type("VoxelNeXtHead", (), dict(stock))
    head = module.VoxelNeXtHead()
    head.point_cloud_range, head.voxel_size, head.gaussian_ratio = PC_RANGE, VOXEL, 1
    head.gaussian_type = [["nearst", "gt_center"], ["gt_center"], ["nearst"], ["nearst", "gt_center"]][seed]
    boxes, _, indices = scene(seed, num_boxes=70, num_voxels=4000, extras=2 * (seed % 2))
    args = (4, boxes, torch.tensor(indices.shape[0]), indices, SHAPE, STRIDE)  # a 0-dim count, as VoxelNeXt
    want = head.assign_target_of_single_head(*args, num_max_objs=60, gaussian_overlap=0.1, min_radius=2)
    integ.install_batched_voxelnext_targets(module, environ={})
    got = head.assign_target_of_single_head(*args, num_max_objs=60, gaussian_overlap=0.1, min_radius=2)
    assert_identical(got, want)
    assert int(want[3].sum()) > 40

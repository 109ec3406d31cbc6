"""Phase 2 teacher-student losses (pcdet_rmae_ts.losses): exact values against slow loop
references, gradient flow, site alignment, degenerate batches, config handling, a short
overfit run and Phase 1 bit-exactness."""
from __future__ import annotations

import copy
import logging
import math
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
from easydict import EasyDict

from pcdet_rmae_ts.compat import import_spconv
from pcdet_rmae_ts.config import ConfigError
from pcdet_rmae_ts.losses import (
    FrameContrastLoss,
    MLFRLoss,
    VoxelContrastLoss,
    build_teacher_student_losses,
    phase2_configs,
)
from pcdet_rmae_ts.losses.common import gather_rows_across_ranks
from pcdet_rmae_ts.losses.voxel_contrast import sample_per_scene
from pcdet_rmae_ts.models.backbone import LossWeights, RMAECMAEBackbonePhase1
from pcdet_rmae_ts.models.pretrain_model import PretrainModel, configure_pretraining_losses

spconv = import_spconv()

# ----------------------------------------------------------------------------- tiny sparse inputs
RANGE = [-9.6, -9.6, -1.4, 9.6, 9.6, 1.4]
VOXEL = [0.4, 0.4, 0.4]
GRID = [48, 48, 7]


def sparse(indices, features, shape, batch_size=2):
    return spconv.SparseConvTensor(features, torch.tensor(indices, dtype=torch.int32), shape, batch_size)


def random_sites(gen, n, shape, batch_size=2):
    """n distinct (b, *site) rows of a grid."""
    total = batch_size * math.prod(shape)
    keys = torch.randperm(total, generator=gen)[:n]
    rows = []
    for key in keys.tolist():
        site = []
        for size in reversed(shape):
            site.append(key % size)
            key //= size
        rows.append([key] + site[::-1])
    return rows


def views(seed, shape, channels, n_teacher=14, duplicates=True):
    """Teacher sites; a student with a subset of them, one student-only site and (optionally)
    duplicated rows in both, as at x_conv4."""
    gen = torch.Generator().manual_seed(seed)
    sites = random_sites(gen, n_teacher + 1, shape)
    t_idx = sites[:n_teacher]
    s_idx = [s for i, s in enumerate(t_idx) if i % 3 != 0] + [sites[n_teacher]]
    if duplicates:
        t_idx = t_idx + t_idx[:2]
        s_idx = s_idx + s_idx[:1]
    t_feat = torch.randn(len(t_idx), channels, generator=gen).requires_grad_(True)
    s_feat = torch.randn(len(s_idx), channels, generator=gen).requires_grad_(True)
    return s_idx, s_feat, t_idx, t_feat


def outputs(scale_tensors: dict, bev, projected=None):
    out = {"encoded_spconv_tensor": bev, "multi_scale_3d_features": scale_tensors}
    if projected is not None:
        out["projected_bev"] = projected
    return out


# ----------------------------------------------------------------------------- slow references
def ref_normalise(t, how):
    if how == "layer_norm":
        mean = sum(t) / len(t)
        var = sum((v - mean) ** 2 for v in t) / len(t)
        return [(v - mean) / math.sqrt(var + 1e-6) for v in t]
    if how == "l2":
        norm = math.sqrt(sum(v * v for v in t))
        return [v / norm for v in t]
    return list(t)


def ref_site_loss(p, t, loss_type):
    if loss_type == "smooth_l1":
        return sum(0.5 * (a - b) ** 2 if abs(a - b) < 1 else abs(a - b) - 0.5 for a, b in zip(p, t)) / len(p)
    dot = sum(a * b for a, b in zip(p, t))
    return 1 - dot / (math.sqrt(sum(a * a for a in p)) * math.sqrt(sum(b * b for b in t)))


def ref_mlfr_scale(loss, scale, s_idx, s_feat, t_idx, t_feat, shape, batch_size):
    teacher, student = {}, {}
    for idx, row in zip(t_idx, t_feat.detach()):
        teacher[tuple(idx)] = teacher.get(tuple(idx), 0) + row
    for idx, row in zip(s_idx, s_feat.detach()):
        student[tuple(idx)] = student.get(tuple(idx), 0) + row
    sites = sorted(teacher)
    token = loss.decoders[scale].mask_token.detach()
    inputs = torch.stack([student[s] if s in student else token for s in sites])
    with torch.no_grad():
        pred = loss.decoders[scale](inputs, torch.tensor(sites, dtype=torch.int32), shape, batch_size)
    num, den = [0.0] * batch_size, [0.0] * batch_size
    for site, p in zip(sites, pred.tolist()):
        w = 1.0 if site in student else loss.masked_site_weight
        target = ref_normalise(teacher[site].tolist(), loss.target_norm)
        num[site[0]] += w * ref_site_loss(p, target, loss.loss_type)
        den[site[0]] += w
    scenes = [n / d for n, d in zip(num, den) if d > 0]
    return sum(scenes) / len(scenes)


def ref_info_nce(queries, keys, positives, tau, excluded=lambda a, b: False):
    losses = []
    for a, q in enumerate(queries):
        logits = {b: float(torch.nn.functional.cosine_similarity(q, k, dim=0)) / tau
                  for b, k in enumerate(keys) if not excluded(a, b)}
        losses.append(-logits[positives[a]] + math.log(sum(math.exp(v) for v in logits.values())))
    return losses


# ----------------------------------------------------------------------------- MLFR
@pytest.mark.parametrize("target_norm,loss_type,kernel,seed", [
    ("layer_norm", "smooth_l1", 3, 0), ("l2", "cosine", 1, 1), ("layer_norm", "cosine", 3, 2),
    ("none", "smooth_l1", 1, 3)])
def test_mlfr_matches_loop_reference(target_norm, loss_type, kernel, seed):
    torch.manual_seed(seed)
    shape3, shape2, c3, c2 = [2, 4, 4], [4, 4], 5, 3
    s3, fs3, t3, ft3 = views(seed, shape3, c3)
    s2, fs2, t2, ft2 = views(seed + 10, shape2, c2, duplicates=False)
    loss = MLFRLoss({"x_conv4": c3, "bev": c2}, ("x_conv4", "bev"), target_norm, loss_type,
                    masked_site_weight=3.0, decoder_kernel=kernel)
    student = outputs({"x_conv4": sparse(s3, fs3, shape3)}, sparse(s2, fs2, shape2))
    teacher = outputs({"x_conv4": sparse(t3, ft3, shape3)}, sparse(t2, ft2, shape2))
    value, parts = loss(student=student, teacher=teacher, mask=None, batch_size=2)
    ref3 = ref_mlfr_scale(loss, "x_conv4", s3, fs3, t3, ft3, shape3, 2)
    ref2 = ref_mlfr_scale(loss, "bev", s2, fs2, t2, ft2, shape2, 2)
    assert float(parts["x_conv4"]) == pytest.approx(ref3, rel=1e-5, abs=1e-6)
    assert float(parts["bev"]) == pytest.approx(ref2, rel=1e-5, abs=1e-6)
    assert float(value.detach()) == pytest.approx((ref3 + ref2) / 2, rel=1e-5, abs=1e-6)
    n_teacher_sites = len({tuple(s) for s in t3})
    n_masked = len({tuple(s) for s in t3} - {tuple(s) for s in s3})
    assert float(parts["x_conv4_masked_frac"]) == pytest.approx(n_masked / n_teacher_sites)
    # gradients reach the student, the decoder and the mask token, never the teacher
    value.backward()
    assert fs3.grad is not None and fs3.grad.abs().sum() > 0 and fs2.grad is not None
    assert ft3.grad is None and ft2.grad is None
    assert loss.decoders["x_conv4"].mask_token.grad.abs().sum() > 0


@pytest.mark.parametrize("pred_dtype", [torch.float32, torch.bfloat16])
def test_mlfr_smooth_l1_keeps_one_float32_tensor_for_backward_and_its_values(pred_dtype):
    """At batch 8 MLFR's per-site losses held the prediction and the target until the backward pass:
    hundreds of MB at the Phase 2 step's peak. The difference alone carries the gradient."""
    from pcdet_rmae_ts.losses.mlfr import site_losses

    gen = torch.Generator().manual_seed(0)
    pred = (torch.randn(300, 16, generator=gen) * 2).to(pred_dtype).requires_grad_(True)
    target = torch.randn(300, 16, generator=gen)
    saved = []

    def pack(t):
        if t.numel() > 1 and t.stride() != (0, 0):  # a broadcast zero costs nothing
            saved.append(t.untyped_storage().nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        losses = site_losses(pred, target, "smooth_l1")
    assert sum(saved) <= 300 * 16 * 4
    diff = pred.detach().float() - target
    reference = torch.where(diff.abs() < 1, 0.5 * diff ** 2, diff.abs() - 0.5).mean(1)
    torch.testing.assert_close(losses, reference)
    losses.sum().backward()
    torch.testing.assert_close(pred.grad.float(), (diff.clamp(-1, 1) / 16).to(pred_dtype).float())


def test_mlfr_decoder_head_is_recomputed_in_backward_with_the_same_gradients():
    """The head (LayerNorm-ReLU-Linear) keeps only its (M, C) input for the backward pass, not three
    (M, C) tensors, and its outputs and gradients are those of the plain head."""
    from pcdet_rmae_ts.losses.mlfr import ScaleDecoder

    torch.manual_seed(0)
    decoder = ScaleDecoder(16, 2, kernel=1)
    features = torch.randn(400, 16, requires_grad=True)
    saved = []

    def pack(t):
        saved.append(t.untyped_storage().nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = decoder(features, None, [8, 8], 1)
    assert sum(saved) <= 400 * 16 * 4
    (out * torch.linspace(-1, 1, 16)).sum().backward()
    grads = [features.grad.clone()] + [p.grad.clone() for p in decoder.head.parameters()]
    features.grad = None
    decoder.zero_grad()
    plain = decoder.head(features)
    torch.testing.assert_close(plain, out)
    (plain * torch.linspace(-1, 1, 16)).sum().backward()
    for got, want in zip(grads, [features.grad] + [p.grad for p in decoder.head.parameters()]):
        torch.testing.assert_close(got, want)


def test_mlfr_student_only_sites_are_dropped_and_no_shared_site_is_all_masked():
    shape = [4, 4]
    s_idx, s_feat, t_idx, t_feat = views(5, shape, 4, duplicates=False)
    loss = MLFRLoss({"bev": 4}, ("bev",), decoder_kernel=1)
    student_only = outputs({}, sparse([[0, 0, 0], [1, 3, 3]], torch.randn(2, 4), shape))
    teacher = outputs({}, sparse([[0, 1, 1], [1, 2, 2]], t_feat[:2], shape))
    value, parts = loss(student=student_only, teacher=teacher, batch_size=2)
    assert float(parts["bev_masked_frac"]) == 1.0 and torch.isfinite(value)
    _, _, _, inputs, seen = loss.decoder_input("bev", outputs({}, sparse(s_idx, s_feat, shape)),
                                               outputs({}, sparse(t_idx, t_feat, shape)))
    assert inputs.shape[0] == len(t_idx)  # the student-only site has no target
    assert int(seen.sum()) == len([s for s in s_idx if s in t_idx])


@pytest.mark.parametrize("kwargs,match", [
    ({"scales": ("x_conv9",)}, "SCALES"), ({"target_norm": "batch"}, "TARGET_NORM.*batch"),
    ({"loss_type": "l2"}, "LOSS_TYPE.*l2"), ({"masked_site_weight": -1.0}, "MASKED_SITE_WEIGHT.*-1"),
    ({"decoder_kernel": 2}, "DECODER_KERNEL.*2")])
def test_mlfr_rejects_bad_hyper_parameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MLFRLoss({"x_conv3": 4, "x_conv4": 4, "bev": 4}, **kwargs)


# ----------------------------------------------------------------------------- voxel contrast
def with_projection(student: dict, projector) -> dict:
    """The student outputs with the projected BEV rows the backbone adds (``projected_bev``)."""
    return dict(student, projected_bev=projector(student["encoded_spconv_tensor"].features))


def bev_views(seed, n=12, c=6, d=5):
    s_idx, s_feat, t_idx, t_feat = views(seed, [4, 4], c, n_teacher=n, duplicates=False)
    projected = torch.randn(len(t_idx), d, generator=torch.Generator().manual_seed(seed + 1)).requires_grad_(True)
    student = outputs({}, sparse(s_idx, s_feat, [4, 4]))
    teacher = outputs({}, sparse(t_idx, t_feat, [4, 4]), projected)
    return student, teacher, (s_idx, s_feat, t_idx, projected)


@pytest.mark.parametrize("radius,seed", [(0.0, 0), (1.5, 1), (2.0, 2)])
def test_voxel_contrast_matches_loop_reference(radius, seed):
    torch.manual_seed(seed)
    student, teacher, (s_idx, s_feat, t_idx, projected) = bev_views(seed)
    projector = torch.nn.Linear(6, 5)
    loss = VoxelContrastLoss(5, num_samples=1000, tau=0.3, neg_radius=radius)
    value, parts = loss(student=with_projection(student, projector), teacher=teacher, mask=None, batch_size=2)
    pairs = [(i, t_idx.index(s)) for i, s in enumerate(s_idx) if s in t_idx]
    with torch.no_grad():
        queries = [loss.predictor(projector(s_feat[i])) for i, _ in pairs]
    keys = [projected[j].detach() for _, j in pairs]
    sites = [t_idx[j] for _, j in pairs]

    def excluded(a, b):
        return a != b and sites[a][0] == sites[b][0] and math.dist(sites[a][1:], sites[b][1:]) <= radius

    rows = ref_info_nce(queries, keys, list(range(len(pairs))), 0.3, excluded if radius > 0 else lambda a, b: False)
    scenes = [[r for r, s in zip(rows, sites) if s[0] == b] for b in range(2)]
    expected = sum(sum(s) / len(s) for s in scenes if s) / sum(1 for s in scenes if s)
    assert float(value.detach()) == pytest.approx(expected, rel=1e-5)
    assert float(parts["num_sites"]) == len(pairs)
    value.backward()
    assert s_feat.grad is not None and s_feat.grad.abs().sum() > 0
    assert projected.grad is None and teacher["encoded_spconv_tensor"].features.grad is None
    assert projector.weight.grad is not None


def test_voxel_contrast_perfectly_aligned_embeddings_have_the_analytic_value():
    """Orthogonal one-hot embeddings, query == key: loss = log(1 + (M - 1) exp(-1 / tau))."""
    m, tau = 6, 0.5
    idx = [[b, y, 0] for b in range(2) for y in range(3)]
    eye = torch.eye(m)
    student = outputs({}, sparse(idx, eye.clone(), [4, 4]))
    teacher = outputs({}, sparse(idx, eye.clone(), [4, 4]), eye.clone())
    loss = VoxelContrastLoss(m, num_samples=100, tau=tau)
    loss.predictor = torch.nn.Identity()
    value, parts = loss(student=with_projection(student, torch.nn.Identity()), teacher=teacher, batch_size=2)
    assert float(value) == pytest.approx(math.log(1 + (m - 1) * math.exp(-1 / tau)), rel=1e-6)
    assert float(parts["acc"]) == 1.0


def test_voxel_contrast_samples_at_most_num_samples_per_scene():
    batch = torch.tensor([0] * 50 + [1] * 3 + [2] * 20)
    torch.manual_seed(0)
    kept = sample_per_scene(batch, 10, 3)
    counts = torch.bincount(batch[kept], minlength=3).tolist()
    assert counts == [10, 3, 10] and kept.unique().numel() == kept.numel()
    assert not torch.equal(kept, sample_per_scene(batch, 10, 3)), "a fresh random subset each call"


def test_voxel_contrast_without_shared_sites_fails_clearly():
    student = outputs({}, sparse([[0, 0, 0]], torch.randn(1, 6), [4, 4], 1))
    teacher = outputs({}, sparse([[0, 2, 2], [0, 3, 3]], torch.randn(2, 6), [4, 4], 1), torch.randn(2, 5))
    loss = VoxelContrastLoss(5)
    with pytest.raises(RuntimeError, match="0 BEV site.*shared"):
        loss(student=with_projection(student, torch.nn.Linear(6, 5)), teacher=teacher, batch_size=1)


@pytest.mark.parametrize("kwargs,match", [({"num_samples": 0}, "NUM_SAMPLES.*0"), ({"tau": 0.0}, "TAU.*0"),
                                          ({"neg_radius": -1}, "NEG_RADIUS.*-1")])
def test_voxel_contrast_rejects_bad_hyper_parameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        VoxelContrastLoss(8, **kwargs)


# ----------------------------------------------------------------------------- frame contrast
def frame_views(seed, batch_size=3, c=6, d=5):
    gen = torch.Generator().manual_seed(seed)
    t_idx = random_sites(gen, 8 * batch_size, [4, 4], batch_size)
    s_idx = t_idx[::2]
    s_feat = torch.randn(len(s_idx), c, generator=gen).requires_grad_(True)
    t_feat = torch.randn(len(t_idx), c, generator=gen).requires_grad_(True)
    projected = torch.randn(len(t_idx), d, generator=gen).requires_grad_(True)
    student = outputs({}, sparse(s_idx, s_feat, [4, 4], batch_size))
    teacher = outputs({}, sparse(t_idx, t_feat, [4, 4], batch_size), projected)
    return student, teacher, (s_idx, s_feat, t_idx, projected)


def ref_frame_embeddings(loss, projector, s_idx, s_feat, t_idx, projected, batch_size):
    queries, keys = [], []
    with torch.no_grad():
        for b in range(batch_size):
            s_rows = [projector(s_feat[i]) for i, s in enumerate(s_idx) if s[0] == b]
            t_rows = [projected[i] for i, s in enumerate(t_idx) if s[0] == b]
            queries.append(loss.predictor(sum(s_rows) / len(s_rows)))
            keys.append(sum(t_rows) / len(t_rows))
    return queries, keys


@pytest.mark.parametrize("seed", [0, 1])
def test_frame_contrast_matches_loop_reference(seed):
    torch.manual_seed(seed)
    student, teacher, (s_idx, s_feat, t_idx, t_projected) = frame_views(seed)
    projector = torch.nn.Linear(6, 5)
    loss = FrameContrastLoss(5, tau=0.25)
    value, parts = loss(student=with_projection(student, projector), teacher=teacher, mask=None, batch_size=3)
    queries, keys = ref_frame_embeddings(loss, projector, s_idx, s_feat, t_idx, t_projected, 3)
    rows = ref_info_nce(queries, keys, [0, 1, 2], 0.25)
    assert float(value.detach()) == pytest.approx(sum(rows) / 3, rel=1e-5)
    assert float(parts["num_frames"]) == 3
    value.backward()
    assert s_feat.grad is not None and s_feat.grad.abs().sum() > 0
    assert t_projected.grad is None and teacher["encoded_spconv_tensor"].features.grad is None


def test_frame_contrast_leaves_out_a_frame_the_student_does_not_see():
    """Frame 1 fully masked (no student site): the loss is the InfoNCE of frames 0 and 2 alone."""
    torch.manual_seed(0)
    _, teacher, (s_idx, s_feat, t_idx, t_projected) = frame_views(0)
    seen = [i for i, site in enumerate(s_idx) if site[0] != 1]
    s_idx = [s_idx[i] for i in seen]
    s_feat = s_feat.detach()[seen].requires_grad_(True)
    student = outputs({}, sparse(s_idx, s_feat, [4, 4], 3))
    projector = torch.nn.Linear(6, 5)
    loss = FrameContrastLoss(5, tau=0.25)
    value, parts = loss(student=with_projection(student, projector), teacher=teacher, mask=None, batch_size=3)
    with torch.no_grad():
        queries, keys = [], []
        for b in (0, 2):
            s_rows = [projector(s_feat[i]) for i, site in enumerate(s_idx) if site[0] == b]
            queries.append(loss.predictor(sum(s_rows) / len(s_rows)))
            keys.append(sum(t_projected[i] for i, site in enumerate(t_idx) if site[0] == b) / sum(
                1 for site in t_idx if site[0] == b))
    assert float(parts["num_frames"]) == 2
    assert float(value.detach()) == pytest.approx(sum(ref_info_nce(queries, keys, [0, 1], 0.25)) / 2, rel=1e-5)


def test_frame_contrast_single_frame_errors_or_skips_with_a_log_line(caplog):
    student, teacher, _ = frame_views(0, batch_size=1)
    student = with_projection(student, torch.nn.Linear(6, 5))
    with pytest.raises(RuntimeError, match="1 frame.*ALLOW_SINGLE"):
        FrameContrastLoss(5)(student=student, teacher=teacher, batch_size=1)
    loss = FrameContrastLoss(5, allow_single=True)
    with caplog.at_level(logging.WARNING, logger="pcdet_rmae_ts.losses.frame_contrast"):
        value, parts = loss(student=student, teacher=teacher, batch_size=1)
    assert float(value) == 0.0 and value.requires_grad and float(parts["skipped"]) == 1.0
    assert any("skipping" in r.getMessage() for r in caplog.records)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _frame_worker(rank, world, port, results):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        projector = torch.nn.Linear(6, 5)
        loss = FrameContrastLoss(5, tau=0.25)
        student, teacher, _ = frame_views(10 + rank, batch_size=2 + rank)
        value, parts = loss(student=with_projection(student, projector), teacher=teacher, batch_size=2 + rank)
        results[rank] = (float(value), float(parts["num_frames"]))
        keys, offset = gather_rows_across_ranks(torch.full((1 + rank, 2), float(rank)))
        results[f"gather{rank}"] = (keys.tolist(), offset)
    finally:
        torch.distributed.destroy_process_group()


def test_frame_contrast_gathers_teacher_embeddings_across_ranks():
    results = mp.Manager().dict()
    mp.spawn(_frame_worker, args=(2, _free_port(), results), nprocs=2, join=True)
    torch.manual_seed(0)
    projector = torch.nn.Linear(6, 5)
    loss = FrameContrastLoss(5, tau=0.25)
    per_rank = [frame_views(10 + r, batch_size=2 + r) for r in range(2)]
    embeddings = [ref_frame_embeddings(loss, projector, *v[2], 2 + r) for r, v in enumerate(per_rank)]
    all_keys = embeddings[0][1] + embeddings[1][1]
    for rank, offset in ((0, 0), (1, 2)):
        queries = embeddings[rank][0]
        rows = ref_info_nce(queries, all_keys, [offset + i for i in range(len(queries))], 0.25)
        assert results[rank][0] == pytest.approx(sum(rows) / len(rows), rel=1e-5)
        assert results[rank][1] == 5
    assert results["gather1"] == ([[0.0, 0.0], [1.0, 1.0], [1.0, 1.0]], 1)


# ----------------------------------------------------------------------------- config and builder
def backbone_cfg(**overrides) -> EasyDict:
    cfg = EasyDict(NAME="RMAECMAEBackbonePhase1", PRETRAINING=True, CHANNELS=[8, 8, 16, 16, 16], OUT_CHANNEL=16,
                   MASKED_RATIO=0.5, MASKING_SEED=0, DISTANCE_THRESHOLDS=[3, 6],
                   OCCUPANCY_DECODER={"HIDDEN_CHANNELS": 16, "REDUCED_CHANNELS": 8},
                   ENABLE_TEACHER_STUDENT=True, TEACHER_BACKBONE_TYPE="ema", TEACHER_MOMENTUM=0.99, FEATURE_DIM=16)
    cfg.update(overrides)
    return cfg


PHASE2 = dict(MLFR={"ENABLED": True}, VOXEL_CONTRAST={"ENABLED": True, "NEG_RADIUS": 1.0, "NUM_SAMPLES": 32},
              FRAME_CONTRAST={"ENABLED": True, "TAU": 0.5})


def test_unknown_phase2_key_names_the_nearest_valid_key():
    with pytest.raises(ConfigError, match=r"VOXEL_CONTRAST\.NUM_SAMPLE.*did you mean 'NUM_SAMPLES'"):
        phase2_configs({"VOXEL_CONTRAST": {"NUM_SAMPLE": 3}}, {})
    with pytest.raises(ConfigError, match="did you mean 'MASKED_SITE_WEIGHT'"):
        phase2_configs({"MLFR": {"MASKED_SITES_WEIGHT": 3}}, {})


def test_phase2_weight_precedence_and_misconfigurations(caplog):
    with caplog.at_level(logging.WARNING, logger="pcdet_rmae_ts.losses"):
        cfgs = phase2_configs({"MLFR": {"ENABLED": True, "WEIGHT": 0.3}, "FRAME_CONTRAST": {"ENABLED": True}},
                              {"MLFR_WEIGHT": 0.7})
    assert cfgs["MLFR"].weight == 0.7 and cfgs["FRAME_CONTRAST"].weight == 1.0
    assert any("LOSS_CONFIG wins" in r.getMessage() for r in caplog.records)
    assert phase2_configs({"MLFR": {"ENABLED": True, "WEIGHT": 0.3}}, {})["MLFR"].weight == 0.3
    with pytest.raises(ValueError, match="VOXEL_CONTRAST_WEIGHT is 0.5 but .*ENABLED is not True"):
        phase2_configs({}, {"VOXEL_CONTRAST_WEIGHT": 0.5})
    with pytest.raises(ValueError, match="FRAME_CONTRAST is enabled with weight 0"):
        phase2_configs({"FRAME_CONTRAST": {"ENABLED": True, "WEIGHT": 0}}, {})


def test_builder_builds_only_with_a_teacher_student_weight():
    channels = {"x_conv1": 8, "x_conv2": 8, "x_conv3": 16, "x_conv4": 16, "bev": 16}
    assert build_teacher_student_losses(backbone_cfg(**PHASE2), {"TEACHER_STUDENT_WEIGHT": 0.0}, channels, 16) == []
    built = build_teacher_student_losses(backbone_cfg(**PHASE2),
                                         {"TEACHER_STUDENT_WEIGHT": 0.6, "VOXEL_CONTRAST_WEIGHT": 0.5}, channels, 16)
    assert [b.name for b in built] == ["mlfr", "voxel_contrast", "frame_contrast"]
    assert [b.weight for b in built] == [1.0, 0.5, 1.0]
    assert isinstance(built[0].module, MLFRLoss) and isinstance(built[2].module, FrameContrastLoss)


def test_model_attaches_built_losses_under_their_state_dict_keys():
    backbone = RMAECMAEBackbonePhase1(backbone_cfg(**PHASE2), 4, GRID, VOXEL, RANGE)
    configure_pretraining_losses(backbone, backbone_cfg(**PHASE2),
                                 {"TEACHER_STUDENT_WEIGHT": 0.6, "VOXEL_CONTRAST_WEIGHT": 0.5, "RMAE_WEIGHT": 1.0})
    assert backbone.ts_loss_weights == {"mlfr": 1.0, "voxel_contrast": 0.5, "frame_contrast": 1.0}
    keys = backbone.state_dict()
    assert any(k.startswith("ts_losses.mlfr.decoders.x_conv3") for k in keys)
    assert any(k.startswith("ts_losses.voxel_contrast.predictor.0.") for k in keys)
    assert any(k.startswith("student_projector.0.") for k in keys)
    no_teacher = backbone_cfg(ENABLE_TEACHER_STUDENT=False, **PHASE2)
    with pytest.raises(ValueError, match="needs PRETRAINING and ENABLE_TEACHER_STUDENT"):
        configure_pretraining_losses(RMAECMAEBackbonePhase1(no_teacher, 4, GRID, VOXEL, RANGE), no_teacher,
                                     {"TEACHER_STUDENT_WEIGHT": 0.6, "RMAE_WEIGHT": 1.0})


# ----------------------------------------------------------------------------- end to end
def scene_batch(seed=0, batch=2, n=300):
    """Voxels of two visibly different scenes (a wall in one, a block in the other) plus clutter."""
    gen = torch.Generator().manual_seed(seed)
    coords = torch.cat([torch.randint(0, batch, (n, 1), generator=gen), torch.randint(0, 7, (n, 1), generator=gen),
                        torch.randint(0, 48, (n, 2), generator=gen)], 1)
    wall = torch.cartesian_prod(torch.tensor([0]), torch.arange(0, 6), torch.arange(5, 40), torch.tensor([30, 31]))
    block = torch.cartesian_prod(torch.tensor([1]), torch.arange(0, 4), torch.arange(10, 20), torch.arange(8, 18))
    coords = torch.unique(torch.cat([coords, wall, block]), dim=0).int()
    features = torch.randn(coords.shape[0], 4, generator=gen)
    features[:, 3] = coords[:, 0].float()  # the scenes also differ in their features
    return {"voxels": features[:, None], "voxel_num_points": torch.ones(coords.shape[0], dtype=torch.int32),
            "voxel_coords": coords, "batch_size": batch}


def pretrain_model(ts_weight: float, **sections) -> PretrainModel:
    cfg = EasyDict(VFE={"NAME": "MeanVFE"}, BACKBONE_3D=backbone_cfg(**sections))
    return PretrainModel(cfg, 4, GRID, VOXEL, RANGE, LossWeights(rmae=1.0, teacher_student=ts_weight),
                         loss_config={"TEACHER_STUDENT_WEIGHT": ts_weight})


def train(model, steps, lr=3e-3):
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=lr)
    model.train()
    history = []
    for _ in range(steps):
        loss, tb = model(scene_batch())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        model.after_optimizer_step(progress=0.0)
        history.append({k: v.detach().clone() if torch.is_tensor(v) else v for k, v in tb.items()})
    return history


def test_overfit_with_phase2_decreases_every_term():
    torch.manual_seed(0)
    model = pretrain_model(0.6, **PHASE2)
    assert set(model.backbone_3d.ts_losses) == {"mlfr", "voxel_contrast", "frame_contrast"}
    history = train(model, 10)
    for key in ("loss_rmae", "loss_mlfr", "loss_voxel_contrast", "loss_frame_contrast", "loss_teacher_student",
                "mlfr_x_conv3", "mlfr_x_conv4", "mlfr_bev"):
        first = sum(float(h[key]) for h in history[:3]) / 3
        last = sum(float(h[key]) for h in history[-3:]) / 3
        assert last < first, f"{key}: {first:.4f} -> {last:.4f}"
    trained = [n for n, p in model.named_parameters() if p.requires_grad]
    assert any(n.startswith("backbone_3d.ts_losses.voxel_contrast.predictor") for n in trained)
    assert all(not p.requires_grad for p in model.backbone_3d.teacher.parameters())


def test_phase1_is_bit_identical_with_phase2_sections_present():
    """Phase 1 (TEACHER_STUDENT_WEIGHT 0): sections absent, disabled or enabled give bitwise the same
    losses and parameters as the backbone driven directly (the code path from before Phase 2)."""
    torch.manual_seed(0)
    reference = RMAECMAEBackbonePhase1(backbone_cfg(), 4, GRID, VOXEL, RANGE)
    reference.freeze_projectors()
    vfe = PretrainModel(EasyDict(VFE={"NAME": "MeanVFE"}, BACKBONE_3D=backbone_cfg()), 4, GRID, VOXEL, RANGE).vfe
    optimizer = torch.optim.Adam([p for p in reference.parameters() if p.requires_grad], lr=3e-3)
    expected = []
    for step in range(2):
        batch = vfe(scene_batch())
        batch["global_step"] = step
        reference.train()(batch)
        loss, _ = reference.get_loss(LossWeights(1.0, 0.0))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        reference.update_teacher(progress=0.0)
        expected.append(loss.detach())
    disabled = {k: dict(v, ENABLED=False) for k, v in PHASE2.items()}
    for sections in (disabled, PHASE2):
        torch.manual_seed(0)
        model = pretrain_model(0.0, **sections)
        assert len(model.backbone_3d.ts_losses) == 0
        losses = [h["loss"] for h in train(model, 2)]
        assert all(torch.equal(a, b) for a, b in zip(losses, expected)), (sections, losses, expected)
        state = {k[len("backbone_3d."):]: v for k, v in model.state_dict().items() if k.startswith("backbone_3d.")}
        assert all(torch.equal(state[k], v) for k, v in copy.deepcopy(reference.state_dict()).items())


@pytest.mark.parametrize("path", ["custom_models/rmae_cmae_isarc_4class_pretraining_phase2.yaml",
                                  "demo/rmae_cmae_demo_pretraining_phase2.yaml"])
def test_shipped_phase2_configs_enable_every_loss(path):
    from pcdet_rmae_ts.config import PACKAGE_ROOT, cfg_from_yaml_file, resolve_loss_config
    from pcdet_rmae_ts.models.backbone import check_backbone_keys

    cfg = cfg_from_yaml_file(PACKAGE_ROOT / "cfgs" / path)
    check_backbone_keys(cfg.MODEL.BACKBONE_3D)
    weights = resolve_loss_config(cfg)
    assert weights["TEACHER_STUDENT_WEIGHT"] == 0.6 and cfg.MODEL.BACKBONE_3D.TEACHER_BACKBONE_TYPE == "ema"
    configs = phase2_configs(cfg.MODEL.BACKBONE_3D, weights)
    assert all(c.enabled and c.weight > 0 for c in configs.values())


def test_per_scene_mean_weighs_scenes_equally_skips_weightless_ones_and_never_syncs(bench_module):
    from pcdet_rmae_ts.losses.common import per_scene_mean

    count_syncs = bench_module("count_syncs")

    values = torch.tensor([1.0, 3.0, 10.0, 7.0, 5.0], requires_grad=True)
    batch = torch.tensor([0, 0, 1, 2, 2])  # scene 3 has no entries, scene 2 only zero weights
    weights = torch.tensor([1.0, 1.0, 2.0, 0.0, 0.0])
    with count_syncs.ProxyCounter() as counter:
        loss = per_scene_mean(values, batch, 4, weights)
        loss.backward()
    assert not counter.sites, counter.sites  # no boolean indexing, nonzero or item, forward or backward
    assert loss.item() == pytest.approx((2.0 + 10.0) / 2)  # scene means 2 and 10; scenes 2 and 3 left out
    assert torch.isfinite(values.grad).all() and values.grad[3:].abs().sum() == 0
    assert torch.allclose(values.grad[:3], torch.tensor([0.25, 0.25, 0.5]))
    assert torch.isnan(per_scene_mean(values.detach(), batch, 4, torch.zeros(5)))  # no scene: NaN, as mean([])

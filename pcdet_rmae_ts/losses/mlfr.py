"""Multi-scale latent feature reconstruction (MLFR, CMAE-3D: Zhang et al., "Contrastive
Masked AutoEncoders for Self-Supervised 3D Object Detection", 2024).

At each scale the student predicts the teacher's (complete-scene) features at every site
the teacher has, including the sites the masked student never produced.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..compat import apply_spconv_cpu_fixes, import_spconv
from ..sparse_align import coalesce_sites, keys_to_indices, lookup_keys, site_keys
from .common import SCALE_NAMES, per_scene_mean, scale_tensor

spconv = import_spconv()
apply_spconv_cpu_fixes()

TARGET_NORMS = ("layer_norm", "l2", "none")
# x_conv4 stacks the rows of conv4, conv5 and conv6 at stride-8 coordinates, so one site can hold
# several rows; every other scale is one sparse conv's output, whose sites are unique.
STACKED_SCALES = ("x_conv4",)
LOSS_TYPES = ("smooth_l1", "cosine")


@dataclass(frozen=True)
class MLFRConfig:
    """``BACKBONE_3D.MLFR``. ``decoder_kernel`` 1 makes the decoder a per-site MLP."""

    enabled: bool = False
    weight: float = 1.0
    scales: Tuple[str, ...] = ("x_conv3", "x_conv4", "bev")
    target_norm: str = "layer_norm"
    loss_type: str = "smooth_l1"
    masked_site_weight: float = 2.0
    decoder_kernel: int = 3


def normalise_target(target: torch.Tensor, how: str) -> torch.Tensor:
    """Per-site normalisation of (M, C) teacher features (detached, float32)."""
    target = target.detach().float()
    if how == "layer_norm":
        return F.layer_norm(target, target.shape[1:], eps=1e-6)
    if how == "l2":
        return F.normalize(target, dim=1)
    return target


def site_losses(pred: torch.Tensor, target: torch.Tensor, loss_type: str) -> torch.Tensor:
    """(M,) loss per site: smooth-L1 averaged over channels, or 1 - cosine similarity.

    Smooth-L1 is taken of the (M, C) float32 difference against a broadcast zero: the same values,
    and its backward keeps that one tensor instead of the prediction and the target (with three
    scales at batch 8 that is hundreds of MB at the step's peak)."""
    if loss_type == "smooth_l1":
        diff = pred.float() - target
        return F.smooth_l1_loss(diff, diff.new_zeros(()).expand_as(diff), reduction="none", beta=1.0).mean(1)
    return 1.0 - F.cosine_similarity(pred, target, dim=1)


class ScaleDecoder(nn.Module):
    """Light student decoder of one scale: the student's features on the teacher's sites (a
    learned mask token where the student has no site), one submanifold conv (k^D, so a masked
    site sees its visible neighbours), then LayerNorm-ReLU-Linear."""

    def __init__(self, channels: int, ndim: int, kernel: int):
        super().__init__()
        self.mask_token = nn.Parameter(torch.randn(channels) * 0.02)
        conv = spconv.SubMConv3d if ndim == 3 else spconv.SubMConv2d
        self.conv = conv(channels, channels, kernel, padding=kernel // 2, bias=True) if kernel > 1 else None
        self.head = nn.Sequential(nn.LayerNorm(channels), nn.ReLU(), nn.Linear(channels, channels))

    def forward(self, features: torch.Tensor, indices: torch.Tensor, spatial_shape: Sequence[int],
                batch_size: int) -> torch.Tensor:
        """features: (M, C) decoder input on sites (M, 1 + D) int32 -> (M, C) predictions."""
        if self.conv is not None:
            x = spconv.SparseConvTensor(features, indices, list(spatial_shape), batch_size)
            features = self.conv(x).features
        if not torch.is_grad_enabled():
            return self.head(features)
        # Recomputed in the backward pass: LayerNorm, ReLU and Linear would otherwise keep three
        # (M, C) tensors until then (float32 under autocast), a few hundred MB at batch 8 at the
        # step's peak, for a few elementwise kernels and one small matmul more.
        return checkpoint(self.head, features, use_reentrant=False, preserve_rng_state=False)  # no randomness in it


class MLFRLoss(nn.Module):
    """Teacher-student loss ``mlfr``: mean over scales of the per-scene, masked-site-weighted
    reconstruction loss of normalised teacher features.

    Args:
        channels: feature channels of each scale (student and teacher share them).
        scales: names among ``x_conv1..x_conv4`` and ``bev``.
        target_norm: 'layer_norm' | 'l2' | 'none', per site over channels.
        loss_type: 'smooth_l1' (beta 1) | 'cosine' (1 - cos).
        masked_site_weight: weight of teacher sites the student lacks (visible sites weigh 1).
        decoder_kernel: odd kernel of the decoder's submanifold conv (1: no conv).
    """

    def __init__(self, channels: Mapping[str, int], scales: Sequence[str] = ("x_conv3", "x_conv4", "bev"),
                 target_norm: str = "layer_norm", loss_type: str = "smooth_l1",
                 masked_site_weight: float = 2.0, decoder_kernel: int = 3):
        super().__init__()
        scales = tuple(scales)
        if not scales or len(set(scales)) != len(scales) or any(s not in SCALE_NAMES for s in scales):
            raise ValueError(f"MLFR.SCALES must be distinct names among {list(SCALE_NAMES)}, got {list(scales)}")
        if target_norm not in TARGET_NORMS:
            raise ValueError(f"MLFR.TARGET_NORM must be one of {TARGET_NORMS}, got '{target_norm}'")
        if loss_type not in LOSS_TYPES:
            raise ValueError(f"MLFR.LOSS_TYPE must be one of {LOSS_TYPES}, got '{loss_type}'")
        if not masked_site_weight >= 0:
            raise ValueError(f"MLFR.MASKED_SITE_WEIGHT must be >= 0, got {masked_site_weight}")
        if decoder_kernel < 1 or decoder_kernel % 2 == 0:
            raise ValueError(f"MLFR.DECODER_KERNEL must be a positive odd integer, got {decoder_kernel}")
        self.scales, self.target_norm, self.loss_type = scales, target_norm, loss_type
        self.masked_site_weight = float(masked_site_weight)
        self.decoders = nn.ModuleDict({
            s: ScaleDecoder(int(channels[s]), 2 if s == "bev" else 3, int(decoder_kernel)) for s in scales})

    def decoder_input(self, scale: str, student: dict, teacher: dict):
        """Align one scale. Returns the teacher's site keys (U,), indices (U, 1 + D), target
        features (U, C), the student-or-mask-token decoder input (U, C) and ``seen`` (U,) bool.
        Student sites absent from the teacher carry no target and are dropped."""
        s_t, t_t = scale_tensor(student, scale), scale_tensor(teacher, scale)
        shape = [int(v) for v in t_t.spatial_shape]
        if scale in STACKED_SCALES:
            t_keys, target = coalesce_sites(t_t.indices, t_t.features.detach(), shape)
            t_indices = keys_to_indices(t_keys, shape)
            s_keys, s_feat = coalesce_sites(s_t.indices, s_t.features, shape)
        else:  # unique sites (one sparse conv's output): sorting is enough, and it never waits on the device
            t_keys, t_order = torch.sort(site_keys(t_t.indices, shape))
            t_indices, target = t_t.indices[t_order], t_t.features.detach()[t_order]
            s_keys, s_order = torch.sort(site_keys(s_t.indices, shape))
            s_feat = s_t.features[s_order]
        seen, pos = lookup_keys(t_keys, s_keys)
        token = self.decoders[scale].mask_token.to(s_feat.dtype)
        gathered = s_feat[pos] if s_feat.shape[0] else token.expand(t_keys.shape[0], -1)
        inputs = torch.where(seen[:, None], gathered, token.expand_as(gathered))
        return t_keys, t_indices, target, inputs, seen

    def scale_loss(self, scale: str, student: dict, teacher: dict, batch_size: int) -> Tuple[torch.Tensor, dict]:
        keys, indices, target, inputs, seen = self.decoder_input(scale, student, teacher)
        if keys.numel() == 0:
            raise RuntimeError(f"MLFR: the teacher has no active site at scale '{scale}' in this batch "
                               f"(empty point clouds?); there is nothing to reconstruct.")
        shape = scale_tensor(teacher, scale).spatial_shape
        pred = self.decoders[scale](inputs.float(), indices, shape, batch_size)
        per_site = site_losses(pred, normalise_target(target, self.target_norm), self.loss_type)
        weights = torch.where(seen, torch.ones_like(per_site), torch.full_like(per_site, self.masked_site_weight))
        loss = per_scene_mean(per_site, indices[:, 0].long(), batch_size, weights)
        return loss, {scale: loss.detach(), f"{scale}_masked_frac": (~seen).float().mean()}

    def forward(self, student: dict, teacher: dict, batch_size: int, **unused) -> Tuple[torch.Tensor, dict]:
        """Mean over ``scales``; tb parts: each scale's loss and the fraction of its teacher sites masked."""
        total, parts = None, {}
        for scale in self.scales:
            loss, scale_parts = self.scale_loss(scale, student, teacher, batch_size)
            total = loss if total is None else total + loss
            parts.update(scale_parts)
        return total / len(self.scales), parts

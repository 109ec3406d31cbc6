"""pcdet_rmae_ts: R-MAE radial masking + teacher-student pretraining for VoxelNeXt.

Importing this package is cheap: it imports neither spconv nor OpenPCDet.
``register()`` adds the plugin's classes to OpenPCDet's registries.
"""
from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["__version__", "register"]


def register():
    """Register the backbone and detector into OpenPCDet's registries (idempotent)."""
    from .integration.pcdet import register as _register

    return _register()

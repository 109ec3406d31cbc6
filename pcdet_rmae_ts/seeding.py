"""One seed for Python's, numpy's and torch's global generators (a leaf: imports nothing from the package)."""
from __future__ import annotations

import random

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and torch's global generators (model init, data order, augmentation).

    Used by the pretraining engine (``--seed``) and by the launchers' ``--seed N`` for OpenPCDet's
    train.py, whose ``--fix_random_seed`` always uses 666.
    """
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)

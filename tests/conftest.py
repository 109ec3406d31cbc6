"""Shared test fixtures: the reference data directory and small configs."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def reference_dir() -> Path:
    """``../shared/reference`` beside the clone (CI layout), or ``$RMAE_REFERENCE_DIR``."""
    override = os.environ.get("RMAE_REFERENCE_DIR")
    return Path(override) if override else REPO_ROOT.parent / "shared" / "reference"


@pytest.fixture(scope="session")
def reference_path():
    def _path(name: str) -> Path:
        path = reference_dir() / name
        if not path.exists():
            pytest.fail(f"Reference file {path} is missing. The tests expect the shared reference data at "
                        f"../shared/reference beside the repository (or set RMAE_REFERENCE_DIR).")
        return path
    return _path

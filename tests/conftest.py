"""Shared test fixtures: the reference data directory and small configs."""
from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = Path(__file__).resolve().parent / "data"


def reference_dir() -> Path:
    """``tests/data``: OpenPCDet reference outputs kept in the repository (provenance in its README.md)."""
    return DATA_DIR


@pytest.fixture(scope="session")
def reference_path():
    def _path(name: str) -> Path:
        path = reference_dir() / name
        if not path.exists():
            pytest.fail(f"Reference file {path} is missing from the checkout; it is part of the repository "
                        f"(git restore tests/data, or clone again).")
        return path
    return _path

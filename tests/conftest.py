"""Shared test fixtures: the reference data directory, small configs and the benchmark scripts."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = Path(__file__).resolve().parent / "data"
BENCH_DIR = REPO_ROOT / "benchmarks"


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


@pytest.fixture(scope="session")
def bench_module():
    """Import a script of ``benchmarks/`` by name (``bench_module("count_syncs")``). The scripts import
    their siblings (bench_pretrain, results_file), so that folder goes on ``sys.path``."""
    loaded = {}

    def _load(name: str):
        if name not in loaded:
            if str(BENCH_DIR) not in sys.path:
                sys.path.insert(0, str(BENCH_DIR))
            spec = importlib.util.spec_from_file_location(name, BENCH_DIR / f"{name}.py")
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            loaded[name] = module
        return loaded[name]
    return _load

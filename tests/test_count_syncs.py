"""The sync counter of benchmarks/count_syncs.py attributes would-sync operators to the package line that
ran them (CPU proxy; the CUDA mode needs a GPU)."""
from __future__ import annotations

import torch


def test_proxy_counts_nonzero_unique_and_item_at_their_package_lines(bench_module):
    from pcdet_rmae_ts.sparse_align import coalesce_sites, match_sites

    count_syncs = bench_module("count_syncs")
    indices = torch.tensor([[0, 1, 2], [0, 1, 2], [0, 3, 4], [1, 0, 0]], dtype=torch.int32)
    with count_syncs.ProxyCounter() as counter:
        match_sites(indices, indices[:2], (8, 8))
        coalesce_sites(indices, torch.ones(4, 2), (8, 8))
        float(torch.ones(2).sum())  # from this test file: not a package line
    sites = counter.sites
    assert any(s.startswith("pcdet_rmae_ts/sparse_align.py:") and s.endswith(" nonzero") for s in sites)
    assert any(s.startswith("torch/functional.py:") and "<- pcdet_rmae_ts/sparse_align.py:" in s
               and s.endswith(" _unique2") for s in sites)
    assert sum(n for s, n in sites.items() if s.endswith("_local_scalar_dense")) == 1
    assert {count_syncs._area(s) for s in sites} >= {"pcdet_rmae_ts", "torch"}


def test_cuda_count_takes_sync_warnings_only(bench_module, monkeypatch):
    """torch's sync debug mode warns "prototype feature ... synchronizing operations" when it is switched on;
    that is not a sync (the H200 count once had it as a 12th, at torch/cuda/__init__.py)."""
    import warnings

    count_syncs = bench_module("count_syncs")

    def set_mode(mode):
        warnings.warn("Synchronization debug mode is a prototype feature and does not yet detect all "
                      "synchronizing operations", stacklevel=2)

    monkeypatch.setattr(torch.cuda, "set_sync_debug_mode", set_mode)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda: None)

    def step():
        warnings.warn("called a synchronizing CUDA operation", stacklevel=2)
        warnings.warn("some other warning", stacklevel=2)

    with warnings.catch_warnings(record=True):
        sites = count_syncs.count_cuda(step)
    assert sum(sites.values()) == 1

"""Shared fixtures: a tiny LIDC phantom, built once per test session."""
from __future__ import annotations

from pathlib import Path

import pytest

#: Small enough for CI: 3 real LIDC scans, 128x128 window around the nodules, a 24-slice slab.
TINY_PHANTOM = dict(n_scans=3, seed=0, matrix=128, max_slices=24)


#: Folders whose tests run tiny networks: one intra-op torch thread is much faster than several on a
#: shared 2-core CPU (OpenMP barriers stall when another process holds a core).
ONE_THREAD_FOLDERS = {"models", "training", "inference"}


@pytest.fixture(autouse=True)
def _one_torch_thread(request: pytest.FixtureRequest):
    """``torch.set_num_threads(1)`` for tests in ONE_THREAD_FOLDERS or marked ``one_torch_thread``."""
    wanted = request.node.get_closest_marker("one_torch_thread") is not None or \
        Path(str(request.node.fspath)).parent.name in ONE_THREAD_FOLDERS
    if not wanted:
        yield
        return
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def tiny_phantom(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Root folder of a LIDC-shaped download (DICOM + XML) written by the phantom."""
    from nodulekit.phantom import write_phantom

    root = tmp_path_factory.mktemp("phantom") / "LIDC"
    write_phantom(root, **TINY_PHANTOM)
    return root


@pytest.fixture(scope="session")
def pylidc_module():
    """pylidc itself (the reference implementation in parity tests), its import warnings silenced."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            import pylidc
        except Exception as exc:  # pragma: no cover
            pytest.skip(f"pylidc not importable: {exc}")
    return pylidc


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip GPU-marked tests where CUDA is not available."""
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    if has_cuda:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)

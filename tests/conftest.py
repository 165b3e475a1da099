"""Shared pytest setup: the ``slow`` marker and the simulator split.

Tests marked ``@pytest.mark.slow`` (full-size VGG parity: hundreds of MB of
weights to compress) run only with ``--slow`` or ``CMZ_SLOW=1``; the default
suite stays fast.

``tests/cuda_sim`` holds the CUDA kernel tests that run under Numba's CUDA
simulator.  NUMBA_ENABLE_CUDASIM must be set before numba is imported, so they
run in their own invocation (``make test`` does both); without the variable
they are not collected.
"""

import os

import pytest

SIMULATOR = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"
collect_ignore = [] if SIMULATOR else ["cuda_sim"]


def pytest_addoption(parser):
    parser.addoption("--slow", action="store_true", help="also run tests marked slow")


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: a long test (full-size models); run with --slow or CMZ_SLOW=1")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--slow") or os.environ.get("CMZ_SLOW") == "1":
        return
    skip = pytest.mark.skip(reason="slow: run with --slow or CMZ_SLOW=1")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)

"""Tests of the GBR building blocks (recbole_reaseq.gbr)."""
from __future__ import annotations

import pytest


@pytest.fixture(autouse=True, scope="module")
def single_thread():
    """Tiny models run fastest on one thread (thread hand-offs dominate, worse on busy cores:
    the synthetic training test took 107 s with 2 threads on 2 busy cores, 3.7 s with 1)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

"""One torch thread per test: the test machines have 2 shared cores, and OpenMP worker threads
that wait for a busy core make training steps several times slower under load."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

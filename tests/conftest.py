"""Fixtures shared by every test module."""
import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """The test models are tiny: one intra-op thread is faster than several, and much faster on a
    busy shared CPU (OpenMP threads spin against each other). Restored after each module."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

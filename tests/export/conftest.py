"""Fixtures shared by the PyTorch-side tests."""
import pytest
import torch


@pytest.fixture(scope="module")
def one_torch_thread():
    """The test machines' two cores are shared: one intra-op thread avoids spin-wait stalls."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

"""Algorithm tests use tiny tensors: one intra-op thread avoids OpenMP spin-waiting on a shared CPU."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

"""Predictor tests run models in this process too: one torch thread, as the test servers use
(musicsplit.localstack), so a loaded 2-core machine does not turn thread barriers into minutes."""

import pytest


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

import logging

import pytest
import torch


@pytest.fixture(autouse=True)
def _deterministic_threads():
    torch.set_num_threads(1)
    yield


@pytest.fixture(autouse=True)
def _quiet_ppokit_logger():
    logging.getLogger("ppokit").setLevel(logging.ERROR)
    yield

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


@pytest.fixture(scope="session")
def tiny_lm(tmp_path_factory) -> str:
    """A 2-layer, 32-wide GPT-2 over the demo's words, saved once for every test that needs a model."""
    pytest.importorskip("transformers")
    from ppokit.rlhf.demo import WORDS
    from ppokit.rlhf.tiny import build_tiny_gpt2

    return str(build_tiny_gpt2(tmp_path_factory.mktemp("tiny_lm"), WORDS, n_layer=2, n_embd=32, n_head=2, seed=0))

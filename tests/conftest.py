import logging

import pytest
import torch


def pytest_collection_modifyitems(config, items):
    """A test marked ``cuda`` is skipped on a machine without a CUDA device (benchmarks/gpu_check.py
    runs them, ``pytest -m cuda``, where there is one)."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if item.get_closest_marker("cuda") is not None:
            item.add_marker(skip)


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

import numpy as np
import pytest
import torch

from ppokit.core.running_stats import RunningMeanStd


def test_running_mean_std_matches_full_data():
    rng = np.random.default_rng(0)
    chunks = [rng.normal(3.0, 2.0, size=(n, 4)) for n in (1, 7, 100, 33)]
    rms = RunningMeanStd((4,), epsilon=0.0 + 1e-12)
    for c in chunks:
        rms.update(torch.from_numpy(c))
    full = np.concatenate(chunks)
    np.testing.assert_allclose(rms.mean.numpy(), full.mean(0), rtol=1e-9)
    np.testing.assert_allclose(rms.var.numpy(), full.var(0), rtol=1e-6)
    x = torch.from_numpy(full[:5]).float()
    expected = (full[:5] - full.mean(0)) / np.sqrt(full.var(0) + 1e-8)
    np.testing.assert_allclose(rms.normalize(x).numpy(), expected, rtol=1e-4, atol=1e-5)
    assert rms.normalize(x * 1000, clip=5.0).abs().max() <= 5.0


def test_state_dict_round_trip_and_shape_check():
    rms = RunningMeanStd((2,))
    rms.update(torch.randn(10, 2))
    other = RunningMeanStd((2,))
    other.load_state_dict(rms.state_dict())
    torch.testing.assert_close(other.mean, rms.mean)
    with pytest.raises(ValueError, match="shape"):
        RunningMeanStd((3,)).load_state_dict(rms.state_dict())

"""The fence around the fast path: what it refuses goes to the torch reference, never silently to it."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from ppokit import PPO, ControlConfig
from ppokit.control import fast
from ppokit.control.algorithm import ControlBatch, PPOAlgorithm
from ppokit.control.fast.flat_adam import FlatAdam
from ppokit.control.fast.update import NumpyMinibatchStep
from ppokit.control.policy.networks import PolicySpec
from ppokit.core.optim import TorchOptimizer
from ppokit.core.update import AutogradStep, PPOUpdateSettings
from ppokit.errors import ConfigError

CPU = torch.device("cpu")
SPEC = PolicySpec(obs_shape=(4,), encoder="mlp", hidden_sizes=(8,), activation="tanh", shared_trunk=False,
                  head="categorical", action_dims=(2,))
SETTINGS = PPOUpdateSettings(num_epochs=1, num_minibatches=1, clip_range=0.2, vf_coef=0.5, ent_coef=0.0)


@dataclasses.dataclass
class SettingsWithMasks(PPOUpdateSettings):
    """The update settings as they might look after a new feature lands."""

    use_action_masks: bool = False


@dataclasses.dataclass(frozen=True)
class SpecWithAttention(PolicySpec):
    """The policy spec as it might look after a feature that does not exist yet lands."""

    attention_heads: int = 0


def test_a_new_update_setting_is_refused_until_the_fast_path_declares_it():
    for value in (False, True):  # even at its default: the fast path has never heard of it
        settings = SettingsWithMasks(**dataclasses.asdict(SETTINGS), use_action_masks=value)
        why = fast.refusal(SPEC, CPU, settings)
        assert why is not None and "use_action_masks" in why
        assert fast.select("auto", SPEC, CPU, settings) is False
        with pytest.raises(ConfigError, match="update_backend.*use_action_masks"):
            fast.select("numpy", SPEC, CPU, settings)
    assert fast.refusal(SPEC, CPU, SETTINGS) is None


def test_a_new_policy_feature_is_refused_until_the_fast_path_declares_it():
    spec = SpecWithAttention(**dataclasses.asdict(SPEC), attention_heads=4)
    why = fast.refusal(spec, CPU)
    assert why is not None and "attention_heads" in why


def test_values_outside_the_allow_list_and_other_devices_are_refused():
    assert "head" in fast.refusal(dataclasses.replace(SPEC, head="multi_categorical", action_dims=(2, 3)), CPU)
    assert "encoder" in fast.refusal(dataclasses.replace(SPEC, encoder="cnn"), CPU)
    assert "CPU" in fast.refusal(SPEC, torch.device("meta"))
    assert fast.select("torch", SPEC, CPU, SETTINGS) is False


def test_the_algorithm_takes_the_reference_step_for_an_undeclared_setting(tmp_path, monkeypatch):
    agent = PPO(ControlConfig(env_id="CartPole-v1", num_envs=2, num_steps=16, total_steps=64, progress=False,
                              tensorboard=False, eval_episodes=0, run_dir=str(tmp_path / "a")))
    assert agent.algorithm.fast_update and isinstance(agent.algorithm.optimizer, FlatAdam)
    batch = ControlBatch(obs=torch.zeros(4, 4), actions=torch.zeros(4, dtype=torch.long), logp=torch.zeros(4),
                         values=torch.zeros(4), advantages=torch.zeros(4), returns=torch.zeros(4))
    assert isinstance(agent.algorithm.minibatch_step(batch, agent.algorithm.settings(0.0)), NumpyMinibatchStep)

    original = PPOAlgorithm.settings
    monkeypatch.setattr(PPOAlgorithm, "settings", lambda self, fraction: SettingsWithMasks(
        **dataclasses.asdict(original(self, fraction)), use_action_masks=True))
    assert isinstance(agent.algorithm.minibatch_step(batch, agent.algorithm.settings(0.0)), AutogradStep)
    agent.total_steps = 64
    record = agent.update()  # runs, on the torch path
    assert record["minibatch_steps"] > 0
    agent.close()


def test_update_backend_chooses_the_implementation(tmp_path):
    def make(backend: str, env_id: str = "CartPole-v1") -> PPO:
        return PPO(ControlConfig(env_id=env_id, num_envs=2, num_steps=16, total_steps=64, progress=False,
                                 tensorboard=False, eval_episodes=0, update_backend=backend,
                                 run_dir=str(tmp_path / backend)))

    reference = make("torch")
    assert not reference.algorithm.fast_update and reference.numpy_policy is None
    assert isinstance(reference.algorithm.optimizer, TorchOptimizer)
    reference.total_steps = 64
    assert reference.update()["minibatch_steps"] > 0
    reference.close()
    numpy = make("numpy")
    assert numpy.algorithm.fast_update and numpy.numpy_policy is not None
    numpy.close()
    with pytest.raises(ConfigError, match="update_backend.*'numpy'.*head"):
        make("numpy", "tests.envs:MultiDiscreteMatchEnv")
    auto = make("auto", "tests.envs:MultiDiscreteMatchEnv")
    # MultiDiscrete: the reference update and acting, on FlatAdam (a small network on a CPU).
    assert not auto.algorithm.fast_update and auto.numpy_policy is None
    assert isinstance(auto.algorithm.optimizer, FlatAdam)
    auto.close()

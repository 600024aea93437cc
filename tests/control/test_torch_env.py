"""Torch-vectorized envs (issue 16): the reference envs' physics against Gymnasium's, the interface
check, learning on a CPU with no host copy in the rollout's loop, saving, loading and exact resume."""

from __future__ import annotations

import ast
import collections
import contextlib
import json
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch

from ppokit import PPO, ControlConfig
from ppokit.control.envs.torch_env import is_torch_env, is_torch_env_class
from ppokit.control.rollout.device import DeviceRolloutCollector
from ppokit.core.running_stats import DeviceMeanStd, RunningMeanStd
from ppokit.envs.torch_cartpole import TorchCartPole
from ppokit.envs.torch_pendulum import TorchPendulum
from ppokit.errors import ConfigError, EnvError, UntrustedCodeError

CARTPOLE_ID = "ppokit.envs.torch_cartpole:TorchCartPole"


def _config(tmp_path: Path, name: str = "run", **changes: Any) -> ControlConfig:
    values: dict[str, Any] = dict(num_envs=64, num_steps=16, num_minibatches=4, num_epochs=2, total_steps=2048,
                                  progress=False, tensorboard=False, eval_episodes=0, run_dir=str(tmp_path / name),
                                  checkpoint_minutes=0)
    values.update(changes)
    return ControlConfig(**values)


# ---------------------------------------------------------------- the reference envs' physics
def test_cartpole_steps_as_gymnasium_does_from_the_same_states():
    env = TorchCartPole(num_envs=32, dtype=torch.float64)
    gym_env = gym.make("CartPole-v1").unwrapped
    gym_env.reset(seed=0)
    rng = np.random.default_rng(0)
    states = rng.uniform(-0.3, 0.3, size=(32, 4)) * np.array([8.0, 3.0, 1.0, 3.0])  # some beyond the limits
    actions = rng.integers(0, 2, size=32)
    ours = env.physics(torch.as_tensor(states), torch.as_tensor(actions)).numpy()
    env.state = torch.as_tensor(states)
    _, _, terminated, _, info = env.step(torch.as_tensor(actions))
    for i in range(32):
        gym_env.state, gym_env.steps_beyond_terminated = states[i].copy(), None
        obs, reward, gym_terminated, _, _ = gym_env.step(int(actions[i]))
        np.testing.assert_allclose(ours[i], gym_env.state, rtol=0, atol=1e-12)
        np.testing.assert_allclose(info["final_obs"][i].numpy(), obs, rtol=0, atol=1e-6)
        assert bool(terminated[i]) == gym_terminated
    assert gym.spec("CartPole-v1").max_episode_steps == env.max_episode_steps
    assert env.single_observation_space == gym_env.observation_space
    assert env.single_action_space == gym_env.action_space


def test_pendulum_steps_as_gymnasium_does_from_the_same_states():
    env = TorchPendulum(num_envs=32, dtype=torch.float64)
    gym_env = gym.make("Pendulum-v1").unwrapped
    gym_env.reset(seed=0)
    rng = np.random.default_rng(1)
    states = rng.uniform(-1, 1, size=(32, 2)) * np.array([2 * np.pi, 8.0])
    torques = rng.uniform(-3, 3, size=(32, 1)).astype(np.float32)  # some beyond the torque limit
    ours, reward = env.physics(torch.as_tensor(states), torch.as_tensor(torques, dtype=torch.float64))
    for i in range(32):
        gym_env.state = states[i].copy()
        _, gym_reward, _, _, _ = gym_env.step(torques[i])
        # Gymnasium clips the float32 torque in float32; the rest is float64 on both sides.
        np.testing.assert_allclose(ours[i].numpy(), gym_env.state, rtol=0, atol=1e-7)
        assert float(reward[i]) == pytest.approx(float(gym_reward), abs=1e-9)
    assert gym.spec("Pendulum-v1").max_episode_steps == env.max_episode_steps
    assert env.single_observation_space == gym_env.observation_space
    assert env.single_action_space == gym_env.action_space


def test_episodes_end_at_gymnasium_s_limit_and_restart_in_the_same_step():
    env = TorchPendulum(num_envs=8)
    first, _ = env.reset(seed=3)
    again, _ = TorchPendulum(num_envs=8).reset(seed=3)
    assert torch.equal(first, again)  # seeded by reset
    zero = torch.zeros(8, 1)
    for step in range(1, 201):
        obs, _, terminated, truncated, info = env.step(zero)
        assert not terminated.any()
        assert bool(truncated.all()) == (step == 200) and bool(truncated.any()) == (step == 200)
    # The ended episodes' last observations are in info; the observation returned is a new start.
    assert not torch.allclose(info["final_obs"], obs)
    assert bool((obs[:, :2].norm(dim=1) - 1).abs().max() < 1e-5) and bool(obs[:, 2].abs().max() <= 1.0)
    assert not env.step(zero)[3].any()


# ---------------------------------------------------------------- the interface and its check
class FakeEnv:
    """A torch env that breaks the interface in one way (``fault``), for the check's messages."""

    def __init__(self, num_envs: int = 4, device: str = "cpu", fault: str = "") -> None:
        self.num_envs, self.device, self.fault = num_envs, device, fault
        self.single_observation_space = gym.spaces.Box(-1, 1, (3,), np.float32)
        self.single_action_space = gym.spaces.Discrete(2)

    def reset(self, *, seed: int | None = None) -> tuple[Any, dict]:
        if self.fault == "dict":
            return {"policy": torch.zeros(self.num_envs, 3)}, {}
        return torch.zeros(self.num_envs, 3), {}

    def step(self, actions: torch.Tensor) -> tuple[Any, ...]:
        n = self.num_envs
        obs: Any = torch.zeros(n, 3)
        reward: Any = torch.zeros(n)
        done: Any = torch.zeros(n, dtype=torch.bool)
        if self.fault == "numpy":
            obs = np.zeros((n, 3), np.float32)
        elif self.fault == "shape":
            reward = torch.zeros(n, 1)
        elif self.fault == "float flags":
            done = torch.zeros(n)
        return obs, reward, done, done, {}

    def close(self) -> None:
        pass


@pytest.mark.parametrize("fault, message", [
    ("numpy", "the observation is a ndarray, expected a torch tensor"),
    ("shape", r"the reward has shape \(4, 1\), expected \(4,\)"),
    ("float flags", "terminated has dtype torch.float32, expected bool"),
    ("dict", "dict of observations"),
])
def test_a_torch_env_that_breaks_the_interface_is_refused_by_name(tmp_path, fault, message):
    with pytest.raises(EnvError, match=message):
        PPO(_config(tmp_path, num_envs=4, num_minibatches=2), env=FakeEnv(fault=fault)).learn()


def test_the_check_names_a_device_a_space_or_a_reset_mode_that_does_not_fit(tmp_path):
    with pytest.raises(EnvError, match="is on cuda, the policy on cpu"):
        PPO(_config(tmp_path, num_envs=4, num_minibatches=2), env=FakeEnv(device="cuda"), device="cpu")
    boxed = FakeEnv()
    boxed.single_observation_space = gym.spaces.Dict({"policy": gym.spaces.Box(-1, 1, (3,))})
    with pytest.raises(EnvError, match="float Box observations"):
        PPO(_config(tmp_path, num_envs=4, num_minibatches=2), env=boxed)
    numpy_style = FakeEnv()
    numpy_style.metadata = {"autoreset_mode": gym.vector.AutoresetMode.NEXT_STEP}  # type: ignore[attr-defined]
    with pytest.raises(EnvError, match="same step"):
        PPO(_config(tmp_path, num_envs=4, num_minibatches=2), env=numpy_style)
    incomplete = FakeEnv()
    del incomplete.single_action_space
    with pytest.raises(EnvError, match="lacks single_action_space"):
        PPO(_config(tmp_path, num_envs=4, num_minibatches=2), env=incomplete)
    assert is_torch_env(FakeEnv()) and not is_torch_env(gym.make("CartPole-v1"))
    assert is_torch_env_class(TorchCartPole) and not is_torch_env_class(gym.envs.classic_control.CartPoleEnv)


def test_what_the_device_collector_does_not_do_yet_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="recurrent"):
        PPO(_config(tmp_path, recurrent="gru"), env=TorchCartPole)
    with pytest.raises(ConfigError, match="update_backend"):
        PPO(_config(tmp_path, update_backend="numpy"), env=TorchCartPole)
    with pytest.raises(ConfigError, match="eval_every"):
        PPO(_config(tmp_path, eval_every=1), env=TorchCartPole(num_envs=64))


# ---------------------------------------------------------------- learning, with no host copy in the loop
@pytest.mark.learning
def test_ppo_learns_torch_cartpole_on_a_cpu(tmp_path):
    config = _config(tmp_path, num_steps=32, num_epochs=10, learning_rate=2e-3, total_steps=100_000,
                     lr_schedule="linear", clip_schedule="linear", ent_coef=0.0, normalize_obs=False,
                     normalize_reward=False, seed=1)
    agent = PPO(config, env=TorchCartPole)
    assert isinstance(agent.collector, DeviceRolloutCollector) and agent.algorithm.fast_update is False
    agent.learn()
    assert agent.global_step <= 100_000
    result = agent.evaluate(20, deterministic=True)
    assert result["episodes"] == 20
    assert result["mean_return"] >= 475, result


#: Tensor methods that copy to the host or wait for the device.
HOST_READS = ("item", "cpu", "numpy", "tolist", "__bool__", "__array__", "__float__", "__int__", "__index__")


@contextlib.contextmanager
def host_reads():
    """Count every call of :data:`HOST_READS` while the block runs."""
    calls: collections.Counter[str] = collections.Counter()
    saved = {name: getattr(torch.Tensor, name) for name in HOST_READS}

    def counting(name: str, method: Any) -> Any:
        def call(self: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            calls[name] += 1
            return method(self, *args, **kwargs)
        return call

    try:
        for name, method in saved.items():
            setattr(torch.Tensor, name, counting(name, method))
        yield calls
    finally:
        for name, method in saved.items():
            setattr(torch.Tensor, name, method)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
def test_the_rollout_and_the_update_stay_on_the_env_s_device(tmp_path, device):
    agent = PPO(_config(tmp_path, device=device, normalize_obs=True, normalize_reward=True), env=TorchPendulum)
    assert isinstance(agent.collector, DeviceRolloutCollector)
    rollout = agent.collector.collect()
    tensors = {name: t for name, t in vars(rollout).items() if isinstance(t, torch.Tensor)}
    assert {t.device.type for t in tensors.values()} == {device}, {n: t.device for n, t in tensors.items()}
    before = [p.detach().clone() for p in agent.policy.parameters()]
    stats = agent.algorithm.update(rollout, 0.5)
    assert all(p.device.type == device for p in agent.policy.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, agent.policy.parameters()))
    assert all(np.isfinite(v) for v in stats.values() if isinstance(v, float)), stats


@pytest.mark.parametrize("env_class, normalize", [(TorchCartPole, False), (TorchPendulum, True)])
def test_the_rollout_reads_nothing_back_per_step_and_the_update_little_per_minibatch(tmp_path, env_class, normalize):
    reads = {}
    for num_steps in (8, 32):
        agent = PPO(_config(tmp_path, num_steps=num_steps, normalize_obs=normalize, normalize_reward=normalize),
                    env=env_class)
        agent.collector.collect()  # the first rollout checks the env's outputs once
        with host_reads() as calls:
            rollout = agent.collector.collect()
        reads[num_steps] = dict(calls)
        with host_reads() as calls:
            stats = agent.algorithm.update(rollout, 0.5)
        syncs = sum(n for name, n in calls.items() if name != "numpy")  # CPU GAE's numpy() views copy nothing
        # Two per minibatch (the loss and the gradient norm, checked finite before each step), a few per update.
        assert syncs <= 2 * stats["minibatch_steps"] + 4, calls
    # One read-back per rollout (episodes and normalisers), however long the rollout.
    assert reads[8] == reads[32] and sum(reads[8].values()) <= 2, reads


def test_the_device_statistics_merge_as_the_host_s_do():
    host, mirror = RunningMeanStd((3,)), RunningMeanStd((3,))
    device = DeviceMeanStd(mirror, torch.device("cpu"))
    rng = np.random.default_rng(0)
    for n in (1, 5, 64):
        batch = rng.normal(2.0, 3.0, size=(n, 3))
        host.update_array(batch)
        device.update(torch.as_tensor(batch))
    device.store(device.packed().numpy())
    np.testing.assert_allclose(mirror._mean, host._mean, rtol=1e-12)
    np.testing.assert_allclose(mirror._var, host._var, rtol=1e-12)
    assert float(mirror._count) == pytest.approx(float(host._count))
    x = torch.as_tensor(rng.normal(size=(4, 3)), dtype=torch.float32)
    np.testing.assert_allclose(device.normalize(x, 10.0).numpy(), host.normalize_array(x.numpy(), 10.0), atol=1e-6)


class Recorder(TorchPendulum):
    """A pendulum that keeps what each step returned."""

    def __init__(self, num_envs: int = 4, device: str = "cpu", **kwargs: Any) -> None:
        super().__init__(num_envs, device, max_episode_steps=5, **kwargs)
        self.steps: list[tuple[torch.Tensor, ...]] = []

    def step(self, actions: torch.Tensor) -> Any:
        result = super().step(actions)
        self.steps.append((result[1].clone(), result[3].clone(), result[4].get("final_obs")))
        return result


@pytest.mark.parametrize("final_obs", [True, False])
def test_a_truncated_step_bootstraps_from_the_final_observation_or_the_last_value(tmp_path, final_obs):
    agent = PPO(_config(tmp_path, num_envs=4, num_steps=12, num_minibatches=2, normalize_obs=False,
                        normalize_reward=False, gamma=0.9, env_kwargs={"final_obs": final_obs}), env=Recorder)
    env = agent.env
    rollout = agent.collector.collect()
    assert bool(rollout.valid.all()) and len(env.steps) == 12
    for t, (reward, truncated, final) in enumerate(env.steps):
        with torch.no_grad():
            following = agent.policy.value(final) if final_obs else rollout.values[t]
        expected = reward + 0.9 * torch.where(truncated, following, torch.zeros_like(following))
        torch.testing.assert_close(rollout.rewards[t], expected)
        assert torch.equal(rollout.terminated[t], truncated)  # every episode end stops the recursion
    assert int(rollout.truncated.sum()) == 2 * 4  # steps 5 and 10 of each env
    assert agent.collector.episodes.last[1] == [5] * 8


def test_a_pendulum_smoke_run_learns_something_continuous(tmp_path):
    config = _config(tmp_path, num_steps=64, num_minibatches=16, num_epochs=4, total_steps=64 * 64 * 6,
                     gamma=0.9, learning_rate=1e-3, log_std_init=-0.5, eval_episodes=8)
    agent = PPO(config, env=TorchPendulum).learn()
    assert agent.collector.episodes.total == 64 * 64 * 6 // 200 // 64 * 64 and set(agent.collector.episodes.lengths) == {200}
    assert all(bool(torch.isfinite(p).all()) for p in agent.policy.parameters())
    result = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert result["episodes"] == 8 and -1700 < result["mean_return"] < 0
    action = agent.predict(torch.zeros(5, 3))
    assert isinstance(action, torch.Tensor) and action.shape == (5, 1) and bool(action.abs().max() <= 2.0)


# ---------------------------------------------------------------- by id, saving, loading, resuming
def test_a_torch_env_named_by_id_saves_loads_and_resumes_exactly(tmp_path):
    changes = dict(env_id=CARTPOLE_ID, num_envs=32, lr_schedule="constant", checkpoint_every=1, eval_episodes=4)
    straight = PPO(_config(tmp_path, "straight", total_steps=32 * 16 * 3, **changes)).learn()
    assert straight.torch_env and straight.config.env_id == CARTPOLE_ID

    PPO(_config(tmp_path, "resumed", total_steps=32 * 16 * 2, **changes)).learn()
    resumed = PPO.resume(tmp_path / "resumed", trust=True, total_steps=32 * 16 * 3).learn()
    assert resumed.global_step == straight.global_step == 32 * 16 * 3
    for a, b in zip(straight.policy.parameters(), resumed.policy.parameters()):
        assert torch.equal(a, b)  # the envs' state, the generators and the normalisers came back exactly
    assert list(resumed.collector.episodes.returns) == list(straight.collector.episodes.returns)

    loaded = PPO.load(tmp_path / "straight", trust=True)
    assert torch.equal(loaded.obs_rms.mean, straight.obs_rms.mean)
    result = loaded.evaluate(6, seed=5)
    assert result == {**straight.evaluate(6, seed=5), "global_step": straight.global_step}
    assert json.loads((tmp_path / "straight" / "eval.json").read_text())["episodes"] == 4
    # A saved file names the module; making it again needs the user's word.
    with pytest.raises(UntrustedCodeError, match=CARTPOLE_ID):
        PPO.load(tmp_path / "straight").evaluate(2)


def test_the_reference_envs_import_nothing_of_ppokit():
    for path in (Path(__file__).resolve().parents[2] / "ppokit" / "envs").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                assert not (node.module or "").startswith("ppokit"), path


def test_loading_a_saved_torch_env_run_imports_nothing_it_names(tmp_path):
    """As tests/test_trust.py: a saved torch-env run whose files name a tracing module, loaded in a fresh
    process, refuses to make its env, and the module never ran."""
    import os
    import subprocess
    import sys

    run = tmp_path / "run"
    PPO(_config(tmp_path, env_id=CARTPOLE_ID, num_envs=8, num_minibatches=2, total_steps=128)).learn()
    state_file = run / "model" / "state.json"
    state = json.loads(state_file.read_text())
    assert state["torch_env"] is True
    state["config"]["env_id"] = "tests.trace_code:make_env"
    state_file.write_text(json.dumps(state))
    trace = tmp_path / "trace"
    code = ("import torch\nfrom ppokit import PPO\nfrom ppokit.errors import UntrustedCodeError\n"
            f"agent = PPO.load({str(run)!r})\n"
            "print(agent.torch_env, agent.predict(torch.zeros(4)).shape)  # acting needs no env\n"
            "try:\n    agent.evaluate(1)\nexcept UntrustedCodeError as err:\n    print('refused:', err)\n")
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1", "PPOKIT_TRACE": str(trace)}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=root, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "True torch.Size([])" in proc.stdout and "refused:" in proc.stdout and "tests.trace_code" in proc.stdout
    assert not trace.exists()

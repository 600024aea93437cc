"""Exported policies (ONNX, TorchScript) act as ``PPO.load(...).predict`` does, without ppokit."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from gymnasium import spaces

from ppokit import PPO, ControlConfig
from ppokit.cli.main import main
from ppokit.control.export import export_policy
from ppokit.errors import ConfigError

# torch 2.13 marks TorchScript deprecated; loading the file is what users of the format do.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

# (name, env id, env kwargs, config changes, export with a mask input)
CASES = [
    ("mlp-discrete", "CartPole-v1", {}, {}, False),
    ("mlp-box-normalised", "Pendulum-v1", {}, {"normalize_obs": True}, False),
    ("cnn", "tests.envs:TinyImageEnv", {}, {}, False),
    ("multidiscrete", "tests.envs:MultiDiscreteMatchEnv", {}, {}, False),
    ("dict-obs-mask-in-obs", "tests.envs:ModeEnv", {"with_mask": True}, {}, True),
    ("info-mask", "tests.envs:LowestValidEnv", {}, {}, True),
    ("gru", "CartPole-v1", {}, {"recurrent": "gru"}, False),
    ("lstm-box", "Pendulum-v1", {}, {"recurrent": "lstm"}, False),
    ("gru-dict-mask", "tests.envs:ModeEnv", {"with_mask": True}, {"recurrent": "gru"}, True),
    ("mixed-tuple", "tests.envs:MixedActionEnv", {}, {"normalize_obs": True}, False),
    ("mixed-dict", "tests.envs:MixedActionEnv", {"as_dict": True}, {}, False),
    ("gru-mixed-dict", "tests.envs:MixedActionEnv", {"as_dict": True}, {"recurrent": "gru"}, False),
    # Images inside a Dict: the file takes the flat vector; normalisation passes the image entries.
    ("dict-images", "tests.envs:CameraEnv", {"text": True}, {"normalize_obs": True}, False),
    ("gru-dict-images", "tests.envs:CameraEnv", {}, {"recurrent": "gru"}, False),
]


def _parts(actions):
    """predict's actions as a list of per-part batches (mixed actions come as a tuple or dict of them)."""
    if isinstance(actions, dict):
        return list(actions.values())
    return list(actions) if isinstance(actions, tuple) else [actions]


@pytest.fixture(scope="module")
def trained_runs(tmp_path_factory):
    """``run_dir(env_id, env_kwargs, changes)``: a short run of that setting, trained once for the module.

    Both formats of a case, and the tests below that need the same setting, read one run's files
    (only read: exporting and loading never write into a run), so each setting trains once."""
    runs: dict[str, Path] = {}

    def run_dir(env_id, env_kwargs, changes) -> Path:
        key = repr((env_id, sorted(env_kwargs.items()), sorted(changes.items())))
        if key not in runs:
            runs[key] = tmp_path_factory.mktemp("trained") / "run"
            config = ControlConfig(env_id=env_id, env_kwargs=env_kwargs, num_envs=2, num_steps=64,
                                   num_minibatches=2, num_epochs=2, total_steps=256, progress=False,
                                   tensorboard=False, eval_episodes=0, **changes)
            PPO(config).learn(run_dir=runs[key]).close()
        return runs[key]

    return run_dir


@pytest.fixture
def trained(trained_runs):
    """``trained(env_id, env_kwargs, changes)``: a fresh ``PPO.load`` of that setting's shared run."""
    return lambda env_id, env_kwargs, changes: PPO.load(trained_runs(env_id, env_kwargs, changes), trust=True)


def _inputs(agent, rng, n=6):
    """Observations in the env's format (a batch, or a list of Dict ones: predict takes those one at a
    time) and flattened as the exported file takes them."""
    space = agent.env_observation_space
    space.seed(int(rng.integers(1 << 30)))
    raw = [space.sample() for _ in range(n)]
    if not isinstance(space, spaces.Box):
        return raw, np.stack([spaces.flatten(space, o) for o in raw]).astype(np.float32)
    batch = np.stack(raw)
    if space.dtype != np.uint8:
        batch = (batch * 3).astype(np.float32)  # beyond clip_obs too
    return batch, batch


def _predict(agent, batch, masks, state=None, starts=None):
    if isinstance(batch, np.ndarray):
        return agent.predict(batch, action_mask=masks, state=state, episode_start=starts)
    # One structured observation at a time; a recurrent state is one row per env.
    out = [agent.predict(o, action_mask=None if masks is None else masks[i:i + 1],
                         state=None if state is None else state[i:i + 1],
                         episode_start=None if starts is None else starts[i:i + 1])
           for i, o in enumerate(batch)]
    if agent.policy.core is None:
        return np.concatenate([np.atleast_1d(a) for a in out])
    return np.concatenate([np.atleast_1d(a) for a, _ in out]), torch.cat([s for _, s in out])


def _runner(path, fmt):
    if fmt == "onnx":
        session = ort.InferenceSession(str(path))
        names = [i.name for i in session.get_inputs()]
        return lambda *args: session.run(None, dict(zip(names, args)))
    module = torch.jit.load(str(path))

    def run(*args):
        out = module(*(torch.as_tensor(a) for a in args))
        return [o.numpy() for o in (out if isinstance(out, tuple) else (out,))]
    return run


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
@pytest.mark.parametrize("name, env_id, env_kwargs, changes, mask", CASES, ids=[c[0] for c in CASES])
def test_exported_policy_matches_predict(tmp_path, trained, fmt, name, env_id, env_kwargs, changes, mask):
    agent = trained(env_id, env_kwargs, changes)
    path = export_policy(agent, tmp_path / f"policy.{fmt}", fmt, action_mask=mask or None)
    run = _runner(path, fmt)
    rng = np.random.default_rng(0)
    n = 6
    masks = None
    if mask:
        width = sum(agent.policy.spec.action_dims)
        masks = rng.random((n, width)) < 0.5
        masks[np.arange(n), rng.integers(width, size=n)] = True  # at least one allowed action per row
    mask_args = [masks] if mask else []
    if agent.policy.core is None:
        batch, flat = _inputs(agent, rng, n)
        want = _parts(_predict(agent, batch, masks))
        got = run(flat, *mask_args)
        assert len(got) == len(want)
        for g, w in zip(got, want):
            np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)
        if masks is not None:
            assert masks[np.arange(n), got[0].reshape(n)].all()
        return
    # Recurrent: three steps, the state fed back; the second step starts a new episode in env 0.
    state, want_state = np.zeros((n, agent.policy.state_size), np.float32), None
    for t in range(3):
        batch, flat = _inputs(agent, rng, n)
        starts = np.full(n, t == 0) | (np.arange(n) == 0) & (t == 1)
        want, want_state = _predict(agent, batch, masks, want_state, starts)
        *got, state = run(flat, *mask_args, state, starts)
        assert len(got) == len(_parts(want))
        for g, w in zip(got, _parts(want)):
            np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(state, want_state.numpy(), rtol=1e-4, atol=1e-5)


def test_mixed_actions_have_one_named_output_per_part(tmp_path, trained):
    agent = trained("tests.envs:MixedActionEnv", {"as_dict": True}, {})
    session = ort.InferenceSession(str(export_policy(agent, tmp_path / "p.onnx", "onnx")))
    outputs = {o.name: o.type for o in session.get_outputs()}
    assert outputs == {"action_level": "tensor(float)", "action_mode": "tensor(int64)"}


def test_export_refuses_what_it_cannot_write_and_keeps_an_earlier_file(tmp_path, monkeypatch, trained):
    agent = trained("tests.envs:MixedActionEnv", {}, {})
    earlier = tmp_path / "policy.onnx"
    earlier.write_bytes(b"an earlier export")
    with pytest.raises(ConfigError, match="an action mask needs Discrete"):  # the Tuple has a Box part
        export_policy(agent, earlier, "onnx", action_mask=True)

    def broken(*args, **kwargs):
        raise RuntimeError("tracing failed")

    monkeypatch.setattr(torch.jit, "trace", broken)
    with pytest.raises(RuntimeError, match="tracing failed"):
        export_policy(agent, earlier, "torchscript")
    assert earlier.read_bytes() == b"an earlier export"
    with pytest.raises(ConfigError, match="unknown format 'tflite'"):
        export_policy(agent, earlier, "tflite")  # type: ignore[arg-type]
    box = trained("Pendulum-v1", {}, {})
    with pytest.raises(ConfigError, match="an action mask needs Discrete"):
        export_policy(box, tmp_path / "p.onnx", "onnx", action_mask=True)


def test_export_cli_writes_the_file_and_reports_bad_input(tmp_path, capsys, trained_runs):
    run = trained_runs("CartPole-v1", {}, {})
    out = tmp_path / "cartpole.pt"
    assert main(["export", str(run), "--format", "torchscript", "-o", str(out)]) == 0
    assert "wrote" in capsys.readouterr().out
    obs = np.zeros((1, 4), np.float32)
    assert torch.jit.load(str(out))(torch.as_tensor(obs)).numpy() == PPO.load(run).predict(obs)
    assert main(["export", str(tmp_path / "nowhere"), "-o", str(tmp_path / "x.onnx")]) == 2
    assert "nowhere" in capsys.readouterr().err
    assert main(["export", str(run), "-o", str(tmp_path)]) == 2
    assert "is a directory" in capsys.readouterr().err


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_export_cli_prints_only_its_own_line(tmp_path, fmt, trained_runs):
    # In a fresh process, as a user runs it: torch.onnx's and onnxscript's INFO records went through the
    # CLI's log handler as "ppokit: INFO: ..." lines, and torch's own handler warned of torchvision.
    run = trained_runs("CartPole-v1", {}, {})
    out = tmp_path / f"policy.{fmt}"
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run([sys.executable, "-m", "ppokit", "export", str(run), "--format", fmt,
                           "-o", str(out)], capture_output=True, text=True, cwd=tmp_path, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(root)})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [f"wrote {out} ({fmt}; inputs and outputs: docs/how-to/export.md)"]
    assert proc.stderr == ""
    assert out.stat().st_size > 0

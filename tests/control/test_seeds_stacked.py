"""``--seeds --stack-updates``: a group whose seeds' minibatch steps run as one stacked computation.

Each seed is its solo run up to float rounding (not bit for bit), the group is deterministic and
resumes exactly, what the fast path does not run is refused in one line, and the seeds still learn.
"""

import json

import numpy as np
import pytest
from safetensors.numpy import load_file

from ppokit.cli.main import main
from ppokit.configuration import from_mapping
from ppokit.control.agent import PPO
from ppokit.control.config import ControlConfig
from ppokit.control.presets import load_preset
from ppokit.control.seeds import SeedGroup
from ppokit.errors import ConfigError
from tests.control.test_seeds import QUICK, _model, _rows

LOSSES = ("policy_loss", "value_loss", "entropy", "approx_kl_k3", "loss", "grad_norm")


def _weights(run_dir):
    return load_file(str(run_dir / "model" / "model.safetensors"))


@pytest.mark.parametrize("extra", [
    {},
    {"env_id": "Pendulum-v1", "normalize_obs": True, "normalize_reward": True},
], ids=["cartpole", "pendulum"])
def test_the_first_stacked_update_is_each_seeds_solo_update_up_to_rounding(tmp_path, extra):
    """One update: the same rollout (acting is exact), the same shuffles, each seed's own Adam: the
    weights and the losses of each seed equal its solo run's to float rounding."""
    config = {**QUICK, "total_steps": 512, "eval_episodes": 0, **extra}
    group = SeedGroup(ControlConfig(**config), [3, 5], stack_updates=True).learn(run_dir=tmp_path / "group")
    group.close()
    assert json.loads((tmp_path / "group" / "seeds.json").read_text())["stack_updates"] is True
    for seed in (3, 5):
        solo = PPO(ControlConfig(**{**config, "seed": seed})).learn(run_dir=tmp_path / f"solo{seed}")
        solo.close()
        stacked, alone = _weights(tmp_path / "group" / f"seed_{seed}"), _weights(tmp_path / f"solo{seed}")
        for name in alone:
            np.testing.assert_allclose(stacked[name], alone[name], rtol=1e-4, atol=1e-5, err_msg=name)
        (row,), (solo_row,) = _rows(tmp_path / "group" / f"seed_{seed}"), _rows(tmp_path / f"solo{seed}")
        assert row["minibatch_steps"] == solo_row["minibatch_steps"] == 16
        for name in LOSSES:
            assert row[name] == pytest.approx(solo_row[name], rel=1e-4, abs=1e-5), name


def test_a_stacked_group_is_deterministic_and_resumes_exactly(tmp_path):
    # In one update some seeds stop their epochs early (each at its own minibatch), others not.
    config = ControlConfig(**{**QUICK, "target_kl": 0.01, "learning_rate": 3e-3})
    whole = SeedGroup(config, [1, 2, 3], stack_updates=True).learn(run_dir=tmp_path / "whole")
    whole.close()
    rows = {s: _rows(tmp_path / "whole" / f"seed_{s}") for s in (1, 2, 3)}
    assert any(len({rows[s][u]["minibatch_steps"] for s in rows}) > 1 for u in range(4))
    again = SeedGroup(config, [1, 2, 3], stack_updates=True).learn(run_dir=tmp_path / "again")
    again.close()
    part = SeedGroup(config, [1, 2, 3], stack_updates=True)
    part.learn(run_dir=tmp_path / "part", callback=lambda row: row["update"] < 2)
    part.close()
    assert all(len(_rows(tmp_path / "part" / f"seed_{s}")) == 2 for s in (1, 2, 3))
    resumed = SeedGroup.resume(tmp_path / "part")
    assert resumed.stack_updates
    resumed.learn()
    resumed.close()
    for seed in (1, 2, 3):
        for other in ("again", "part"):
            assert _model(tmp_path / other / f"seed_{seed}") == _model(tmp_path / "whole" / f"seed_{seed}"), other
            assert _rows(tmp_path / other / f"seed_{seed}") == rows[seed], other


def test_a_seed_that_stops_leaves_the_others_stacked(tmp_path):
    """A seed stopped by the callback (or stop_at_return) sits out; the others' updates stay stacked and
    are what they are without it (each seed's computation is its own)."""
    config = ControlConfig(**{**QUICK, "total_steps": 1536, "eval_episodes": 0})
    group = SeedGroup(config, [1, 2, 3], stack_updates=True)
    group.learn(run_dir=tmp_path / "g", callback=lambda row: not (row["seed"] == 2 and row["update"] == 1))
    group.close()
    assert [len(_rows(tmp_path / "g" / f"seed_{s}")) for s in (1, 2, 3)] == [3, 1, 3]
    pair = SeedGroup(config, [1, 3], stack_updates=True).learn(run_dir=tmp_path / "pair")
    pair.close()
    for seed in (1, 3):
        stacked, alone = _weights(tmp_path / "g" / f"seed_{seed}"), _weights(tmp_path / "pair" / f"seed_{seed}")
        for name in alone:
            np.testing.assert_allclose(stacked[name], alone[name], rtol=1e-4, atol=1e-5, err_msg=name)


def test_resuming_a_group_in_the_other_mode_is_refused(tmp_path):
    config = ControlConfig(**{**QUICK, "total_steps": 1024, "eval_episodes": 0})
    group = SeedGroup(config, [1, 2], stack_updates=True)
    group.learn(run_dir=tmp_path / "g", callback=lambda row: False)
    group.close()
    plain = SeedGroup(config, [1, 2])
    with pytest.raises(ConfigError, match="trained with --stack-updates"):
        plain.learn(run_dir=tmp_path / "g", resume=True)
    plain.close()


@pytest.mark.parametrize("extra, says", [
    ({"update_backend": "torch"}, "update_backend is 'torch'"),
    ({"recurrent": "lstm", "num_minibatches": 2}, "recurrent"),
], ids=["torch-backend", "recurrent"])
def test_what_the_fast_path_does_not_run_is_refused_in_one_line(extra, says):
    with pytest.raises(ConfigError, match="--stack-updates cannot apply") as err:
        SeedGroup(ControlConfig(**{**QUICK, **extra}), [1, 2], stack_updates=True)
    assert says in str(err.value) and "\n" not in str(err.value)


KINDS = [(obs, action, "none") for obs in ("box", "discrete", "dict", "image", "dict_image")
         for action in ("discrete", "box", "multidiscrete", "mixed")]
KINDS += [("box", "discrete", mask) for mask in ("obs", "info")] + [("box", "box", "privileged")]


@pytest.mark.parametrize("obs, action, mask", KINDS, ids=["-".join(k) for k in KINDS])
def test_every_observation_action_and_mask_kind_stacks_or_is_refused_in_one_line(tmp_path, obs, action, mask):
    """Stacked updates run exactly where the fast path runs the update; elsewhere the group is refused
    when it is made, in one line naming why."""
    kwargs = {"obs": obs, "action": action, "mask": "none" if mask == "privileged" else mask,
              "critic_obs": mask == "privileged"}
    config = ControlConfig(env_id="tests.envs:ComboEnv", env_kwargs=kwargs, num_envs=2, num_steps=16, total_steps=32,
                           num_epochs=1, num_minibatches=2, progress=False, tensorboard=False, eval_episodes=0)
    plain = SeedGroup(config, [1, 2])
    fast = all(a.algorithm.fast_update for a in plain.agents)
    plain.close()
    if not fast:
        with pytest.raises(ConfigError, match="--stack-updates cannot apply") as err:
            SeedGroup(config, [1, 2], stack_updates=True)
        assert "\n" not in str(err.value)
        return
    group = SeedGroup(config, [1, 2], stack_updates=True).learn(run_dir=tmp_path / "g")
    group.close()
    assert [_rows(tmp_path / "g" / f"seed_{s}")[0]["minibatch_steps"] for s in (1, 2)] == [2, 2]


def test_the_command_line_stacks_resumes_and_refuses(tmp_path, capsys):
    args = ["train", "CartPole-v1", "--preset", "CartPole-v1-cleanrl", "--total-steps", "1024", "--set", "eval_episodes=1",
            "--set", "tensorboard=false", "--no-progress", "--run-dir", str(tmp_path / "g")]
    assert main(args + ["--seeds", "1-2", "--stack-updates"]) == 0
    assert "their updates stacked" in capsys.readouterr().err
    assert json.loads((tmp_path / "g" / "seeds.json").read_text())["stack_updates"] is True
    assert main(["resume", str(tmp_path / "g"), "--total-steps", "1536", "--no-progress"]) == 0
    assert all(len(_rows(tmp_path / "g" / f"seed_{s}")) == 3 for s in (1, 2))
    capsys.readouterr()
    assert main(["info", str(tmp_path / "g")]) == 0
    assert "seeds trained together, their updates stacked" in capsys.readouterr().out
    assert main(args[:-2] + ["--stack-updates"]) == 2
    assert "give it with --seeds" in capsys.readouterr().err
    assert main(args[:-2] + ["--seeds", "1-2", "--stack-updates", "--set", "update_backend=torch",
                             "--run-dir", str(tmp_path / "t")]) == 2
    err = capsys.readouterr().err
    assert "--stack-updates cannot apply" in err and "Traceback" not in err


@pytest.mark.learning
def test_stacked_seeds_still_learn_cartpole(tmp_path):
    data = load_preset("CartPole-v1")
    data.update(progress=False, tensorboard=False, eval_episodes=0)
    config = from_mapping(ControlConfig, data)
    assert config.total_steps <= 100_000
    group = SeedGroup(config, [1, 2, 3], stack_updates=True).learn(run_dir=tmp_path / "g")
    returns = [agent.evaluate(20, deterministic=True)["mean_return"] for agent in group.agents]
    group.close()
    assert all(agent.global_step <= 100_000 for agent in group.agents)
    assert min(returns) >= 475, returns

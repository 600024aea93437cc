"""The feature matrix of control runs: observation kinds × action kinds × masks × recurrence × preset
or none × update backend × one seed or a seed group × critic options. Every combination either runs
one update or is refused before training in one line that names the conflict; the settings a
combination does not give adapt to those it does (the preset's and the defaults' num_minibatches to a
recurrent policy, say). All pairs of values are covered (tests/pairwise.py); the refusals are listed
here with their reasons, so a combination that starts failing, or one refused without a reason, fails."""

from __future__ import annotations

from typing import Any

import pytest

from ppokit import PPO, ControlConfig
from ppokit.configuration import from_mapping
from ppokit.control.presets import load_preset
from ppokit.control.seeds import SeedGroup
from ppokit.errors import PPOKitError
from tests.pairwise import all_pairs

AXES: dict[str, list[Any]] = {
    "obs": ["box", "image", "dict", "discrete", "dict_image"],
    "action": ["discrete", "multidiscrete", "box", "mixed"],
    "mask": ["none", "info", "obs", "method"],
    "recurrent": [None, "lstm", "gru"],
    "preset": [None, "CartPole-v1", "Pendulum-v1"],
    "backend": ["auto", "torch", "numpy"],
    "seeds": [1, 2],
    "critic": ["separate", "shared_trunk", "privileged", "clip_range_vf"],
}


def expected_refusals(combo: dict[str, Any]) -> list[str]:
    """Why a combination is refused (a part of the one-line message; where several reasons apply, any
    of them may be the one named), or [] when it must run."""
    reasons = []
    masked = combo["mask"] != "none" and combo["action"] in ("discrete", "multidiscrete")
    if combo["mask"] == "obs" and combo["action"] in ("box", "mixed"):
        reasons.append("needs Discrete or MultiDiscrete actions")  # a mask key in the observation cannot apply
    if combo["critic"] == "privileged" and combo["recurrent"]:
        reasons.append("not supported with a recurrent policy yet")
    if combo["critic"] == "privileged" and combo["obs"] == "image":
        reasons.append("needs the critic's own trunk")
    if combo["backend"] == "numpy" and (combo["recurrent"] or combo["obs"] in ("image", "dict_image") or masked
                                        or combo["action"] in ("multidiscrete", "mixed")
                                        or combo["critic"] in ("shared_trunk", "privileged")):
        reasons.append("'update_backend' = 'numpy' cannot apply")  # the fast path's allow-list
    return reasons


COMBOS = all_pairs(AXES)


def _config(combo: dict[str, Any], run_dir: str) -> ControlConfig:
    preset = load_preset(combo["preset"]) if combo["preset"] else {}
    given: dict[str, Any] = dict(
        env_id="tests.envs:ComboEnv", num_envs=2, num_steps=16, total_steps=32, num_epochs=1, progress=False,
        tensorboard=False, eval_episodes=1, run_dir=run_dir, update_backend=combo["backend"],
        env_kwargs={"obs": combo["obs"], "action": combo["action"], "mask": combo["mask"],
                    "critic_obs": combo["critic"] == "privileged"})
    if combo["recurrent"]:
        given["recurrent"] = combo["recurrent"]
    if combo["critic"] == "shared_trunk":
        given["shared_trunk"] = True
    if combo["critic"] == "clip_range_vf":
        given["clip_range_vf"] = 0.2
    # The preset's values are not the user's: they adapt to the given ones, as on the command line.
    return from_mapping(ControlConfig, {**preset, **given}, "matrix", given=set(given))


@pytest.mark.parametrize("combo", COMBOS, ids=[f"{i}-" + "-".join(map(str, c.values())) for i, c in enumerate(COMBOS)])
def test_each_combination_runs_one_update_or_is_refused_before_training(combo, tmp_path):
    expected = expected_refusals(combo)
    run_dir = str(tmp_path / "run")
    try:
        config = _config(combo, run_dir)
        if combo["seeds"] > 1:
            group = SeedGroup(config, [1, 2])
            group.learn(run_dir=run_dir)
            steps = [agent.global_step for agent in group.agents]
        else:
            agent = PPO(config)
            agent.learn()
            steps = [agent.global_step]
    except PPOKitError as err:
        message = str(err)
        assert expected, f"refused, but nothing refuses {combo}: {message}"
        assert any(reason in message for reason in expected) and "\n" not in message, (message, expected)
        assert not (tmp_path / "run" / "eval.json").exists()  # refused before training, not after
        return
    assert not expected, f"{combo} ran, but should be refused: {expected}"
    assert steps == [32] * combo["seeds"]


def test_every_pair_of_values_is_covered():
    seen = {(a, repr(c[a]), b, repr(c[b])) for c in COMBOS for a in AXES for b in AXES if a < b}
    for a in AXES:
        for b in AXES:
            if a < b:
                for va in AXES[a]:
                    for vb in AXES[b]:
                        assert (a, repr(va), b, repr(vb)) in seen, (a, va, b, vb)


USER_SETTINGS: dict[str, list[Any]] = {
    "recurrent": [None, "lstm", "gru"],
    "num_envs": [None, 3, 8],
    "num_steps": [None, 100],
    "num_minibatches": [None, 8],
    "total_steps": [None, 1000],
    "adaptive_clip": [None, True],
    "stop_at_return": [None, 100.0],
}


def _conflict(given: dict[str, Any], config_values: dict[str, Any]) -> bool:
    """Whether the fields the user set conflict among themselves (then a refusal is right)."""
    envs = given.get("num_envs", config_values["num_envs"])
    steps = given.get("num_steps", config_values["num_steps"])
    minibatches = given.get("num_minibatches")
    total = given.get("total_steps", config_values["total_steps"])
    if "num_steps" in given and "total_steps" in given and total < envs * steps:
        return True
    if minibatches is None:
        return False
    if given.get("recurrent") and "num_envs" in given and envs % minibatches:
        return True
    return "num_steps" in given and "num_envs" in given and (envs * steps) % minibatches != 0


@pytest.mark.parametrize("preset", [None, "CartPole-v1", "Pendulum-v1", "HalfCheetah-v5", "BreakoutNoFrameskip-v4",
                                    "CartPole-v1-cleanrl"])
def test_what_the_user_leaves_unset_adapts_to_what_they_set(preset):
    """Over the full product of these settings on each preset: the config builds, keeping every value the
    user set, or it is refused in one line naming a field the user set, only when those conflict."""
    import itertools

    base = load_preset(preset) if preset else {}
    names = list(USER_SETTINGS)
    for values in itertools.product(*(USER_SETTINGS[n] for n in names)):
        given = {n: v for n, v in zip(names, values) if v is not None}
        data = {**base, "env_id": "CartPole-v1", **given}
        defaults = {**{f: getattr(ControlConfig, f, None) for f in ("num_envs", "num_steps", "total_steps")},
                    **{k: base[k] for k in ("num_envs", "num_steps", "total_steps") if k in base}}
        try:
            config = from_mapping(ControlConfig, data, "matrix", given=set(given) | {"env_id"})
        except PPOKitError as err:
            assert _conflict(given, defaults), (preset, given, str(err))
            assert "\n" not in str(err) and any(f"'{n}'" in str(err) for n in given), (given, str(err))
            continue
        assert not _conflict(given, defaults), (preset, given)
        for name, value in given.items():
            assert getattr(config, name) == value, (preset, given, name)

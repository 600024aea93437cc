"""Images inside Dict observations (issue 31 item 8): a CNN per image part beside the other parts, as
SB3's MultiInputPolicy; image values scaled by ``image_scale``, never normalised element-wise; text
parts (MiniGrid's ``mission``) dropped with a notice or refused; other unreadable parts refused."""

from __future__ import annotations

import importlib.util
import json
import logging

import numpy as np
import pytest
import torch
import yaml
from gymnasium import spaces

from ppokit import PPO, ControlConfig
from ppokit.control import fast
from ppokit.control.envs.observations import ObservationReader, observation_layout
from ppokit.control.policy.networks import ActorCritic, PolicySpec
from ppokit.errors import EnvError
from tests.envs import CameraEnv


def _config(tmp_path, name: str = "run", total_steps: int = 128, **changes) -> ControlConfig:
    env_kwargs = changes.pop("env_kwargs", {"text": True})
    return ControlConfig(env_id="tests.envs:CameraEnv", env_kwargs=env_kwargs, num_envs=4, num_steps=32,
                         num_minibatches=4, num_epochs=2, total_steps=total_steps, progress=False, tensorboard=False,
                         eval_episodes=2, run_dir=str(tmp_path / name), **changes)


def test_the_layout_names_each_part_in_flatten_order():
    space = CameraEnv().observation_space
    layout = observation_layout(space)
    assert layout == (("camera", 192, (8, 8, 3)), ("joints", 3, ()), ("step", 11, ()))
    assert sum(size for _, size, _ in layout) == spaces.flatdim(space)
    # A flattened observation's slices are the parts: the image's entries are the image, raveled.
    env = CameraEnv()
    obs, _ = env.reset(seed=0)
    flat = spaces.flatten(space, obs)
    np.testing.assert_array_equal(flat[:192].reshape(8, 8, 3), obs["camera"])
    assert observation_layout(spaces.Dict({"a": spaces.Box(0, 1, (2,)), "b": spaces.Discrete(3)})) == ()


def test_a_dict_with_an_image_trains_one_update_and_predicts(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="ppokit"):
        agent = PPO(_config(tmp_path))
    assert any("'mission' holds text" in r.getMessage() for r in caplog.records)  # the notice names the key
    spec = agent.policy.spec
    assert spec.encoder == "multi" and [name for name, _, _ in spec.obs_parts] == ["camera", "joints", "step"]
    assert fast.refusal(spec, torch.device("cpu")) is not None  # the fast path refuses it: the torch path runs
    agent.learn()
    assert agent.global_step == 128 and not agent.algorithm.fast_update
    env = CameraEnv(text=True)
    obs, _ = env.reset(seed=3)
    action = agent.predict(obs)  # the env's own observation, mission and all
    assert env.action_space.contains(int(action))
    batch = {k: np.stack([obs[k], obs[k]]) for k in ("camera", "joints", "step")}
    batch["mission"] = [obs["mission"]] * 2
    assert agent.predict(batch).tolist() == [int(action)] * 2
    loaded = PPO.load(tmp_path / "run", trust=True)
    assert loaded.policy.spec == spec and loaded.predict(obs) == action
    assert loaded.evaluate(2)["episodes"] == 2


def test_normalisation_leaves_the_image_entries_alone(tmp_path):
    agent = PPO(_config(tmp_path, normalize_obs=True))
    agent.learn()
    rms = agent.obs_rms
    assert rms is not None and rms.keep is not None and int(rms.keep.sum()) == 192
    obs, _ = CameraEnv().reset(seed=1)
    flat = spaces.flatten(agent.env_observation_space, obs).astype(np.float32)[None]
    out = rms.normalize_array(flat, 10.0)
    np.testing.assert_array_equal(out[0, :192], flat[0, :192])  # 0 and 255 as they are, unclipped
    assert not np.allclose(out[0, 192:], flat[0, 192:])  # the other parts are normalised
    through_torch = rms.normalize(torch.as_tensor(flat), 10.0).numpy()  # predict on a device, export
    np.testing.assert_array_equal(through_torch[0, :192], flat[0, :192])
    np.testing.assert_allclose(through_torch, out, rtol=1e-6)


def test_image_scale_is_recorded_and_used(tmp_path):
    agent = PPO(_config(tmp_path, "default"))
    agent.learn()
    saved = yaml.safe_load((tmp_path / "default" / "config.yaml").read_text())
    assert saved["image_scale"] == pytest.approx(1 / 255) and agent.policy.spec.image_scale == pytest.approx(1 / 255)
    agent = PPO(_config(tmp_path, "codes", image_scale=0.1))
    agent.learn()
    assert yaml.safe_load((tmp_path / "codes" / "config.yaml").read_text())["image_scale"] == 0.1
    encoder = agent.policy.encoder.images[0]
    assert encoder.scale == 0.1 and PPO.load(tmp_path / "codes").policy.spec.image_scale == 0.1


def test_small_image_values_scaled_by_1_over_255_are_warned_about(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="ppokit"):
        PPO(_config(tmp_path, "codes", env_kwargs={"dim": 10})).learn()
    said = [r.getMessage() for r in caplog.records if "image_scale" in r.getMessage()]
    assert len(said) == 1 and "never exceed 10" in said[0], said
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="ppokit"):  # pixels, or a scale the user chose: no warning
        PPO(_config(tmp_path, "pixels", total_steps=256)).learn()
        PPO(_config(tmp_path, "chosen", env_kwargs={"dim": 10}, image_scale=0.1)).learn()
    assert not [r for r in caplog.records if "image_scale" in r.getMessage()]


def test_image_scale_applies_to_plain_images_too(tmp_path):
    config = ControlConfig(env_id="tests.envs:TinyImageEnv", num_envs=2, num_steps=16, num_minibatches=2,
                           num_epochs=1, total_steps=32, progress=False, tensorboard=False, eval_episodes=0)
    default = PPO(config)
    assert default.policy.spec.encoder == "cnn" and default.config.image_scale == pytest.approx(1 / 255)
    scaled = PPO(config, image_scale=1.0)
    assert scaled.policy.encoder.scale == 1.0
    scaled.policy.encoder.load_state_dict(default.policy.encoder.state_dict())
    image = torch.randint(0, 256, (3, 12, 12, 1), dtype=torch.uint8)
    with torch.no_grad():  # the same CNN, fed values already divided by 255 under image_scale 1
        torch.testing.assert_close(scaled.policy.encoder(image.float() / 255), default.policy.encoder(image))


def test_minigrid_ids_get_the_minigrid_preset():
    from ppokit.control.presets import default_preset_for, load_preset

    for env_id in ("minigrid:MiniGrid-Empty-5x5-v0", "MiniGrid-DoorKey-5x5-v0", "minigrid:MiniGrid-KeyCorridorS3R1-v0"):
        assert default_preset_for(env_id) == "minigrid", env_id
    assert default_preset_for("minigrid:BabyAI-GoToLocal-v0") is None
    assert load_preset("minigrid")["image_scale"] == 0.1


def test_text_is_refused_when_asked_and_other_parts_always(tmp_path):
    with pytest.raises(EnvError, match=r"observation key 'mission' holds text .*text_observations: drop"):
        PPO(_config(tmp_path, text_observations="refuse"))
    for extra, kind in (("sequence", "Sequence"), ("graph", "Graph")):
        with pytest.raises(EnvError, match=rf"observation key '\w+' is a {kind} space, which the policy cannot read"):
            PPO(_config(tmp_path, env_kwargs={"extra": extra}))
    one_of = spaces.Dict({"x": spaces.OneOf([spaces.Discrete(2), spaces.Box(0, 1, (2,))])})
    with pytest.raises(EnvError, match=r"observation key 'x' is a OneOf space"):
        ObservationReader(one_of, spaces.Discrete(2), "action_mask")
    with pytest.raises(EnvError, match=r"the observation is a Text space"):
        ObservationReader(spaces.Text(8), spaces.Discrete(2), "action_mask")


def test_recurrent_policy_with_images_in_a_dict(tmp_path):
    agent = PPO(_config(tmp_path, recurrent="gru"))
    agent.learn()
    obs, _ = CameraEnv(text=True).reset(seed=0)
    action, state = agent.predict(obs)
    assert state.shape == (1, agent.policy.state_size)


def test_resume_continues_a_dict_image_run(tmp_path):
    whole = PPO(_config(tmp_path, "whole", total_steps=256))
    whole.learn()
    part = PPO(_config(tmp_path, "part", total_steps=256, checkpoint_every=1))
    part.learn(total_steps=128)
    resumed = PPO.resume(tmp_path / "part", trust=True)
    resumed.learn(total_steps=256)
    for a, b in zip(whole.policy.parameters(), resumed.policy.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_a_seed_group_trains_dict_images(tmp_path):
    from ppokit.control.seeds import SeedGroup

    group = SeedGroup(_config(tmp_path), [1, 2]).learn(run_dir=tmp_path / "group")
    assert sorted(p.name for p in (tmp_path / "group").glob("seed_*")) == ["seed_1", "seed_2"]
    assert all(agent.policy.spec.encoder == "multi" for agent in group.agents)


def test_tiny_images_get_the_2x2_cnn():
    for side in (2, 3, 4):
        space = spaces.Dict({"grid": spaces.Box(0, 255, (side, side, 3), np.uint8), "v": spaces.Box(-1, 1, (2,))})
        flat = spaces.flatten_space(space)
        spec = PolicySpec.from_spaces(flat, spaces.Discrete(3), obs_parts=observation_layout(space))
        policy = ActorCritic(spec)
        obs = torch.as_tensor(np.stack([spaces.flatten(space, space.sample()) for _ in range(2)]), dtype=torch.float32)
        assert policy.action(obs).shape == (2,)


@pytest.mark.learning
@pytest.mark.skipif(importlib.util.find_spec("minigrid") is None, reason="minigrid is not installed")
def test_minigrid_empty_5x5_is_solved_from_its_dict_observation(tmp_path):
    from ppokit.cli.main import main

    run = tmp_path / "empty"
    assert main(["train", "minigrid:MiniGrid-Empty-5x5-v0", "--total-steps", "16384", "--run-dir", str(run),
                 "--no-progress", "--set", "eval_episodes=10", "--set", "tensorboard=false"]) == 0
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["image_scale"] == 0.1 and saved["num_envs"] == 16  # the minigrid preset
    assert json.loads((run / "eval.json").read_text())["mean_return"] >= 0.9

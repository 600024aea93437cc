import pytest

from ppokit.configuration import from_mapping, load_yaml, parse_overrides, replace
from ppokit.control.config import ControlConfig
from ppokit.errors import ConfigError
from ppokit.presets import list_presets, load_preset


def test_defaults_are_valid_and_documented():
    import dataclasses

    cfg = ControlConfig()
    assert cfg.batch_size == cfg.num_envs * cfg.num_steps
    for f in dataclasses.fields(ControlConfig):
        assert f.metadata.get("help"), f"field {f.name} has no help text"


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"clip_range": -0.1}, "'clip_range' = -0.1 is invalid"),
        ({"num_minibatches": 3}, "does not divide the batch size"),
        ({"gamma": 1.5}, "'gamma' = 1.5 is invalid"),
        ({"loss": "ppo2"}, "expected one of .clip., .penalty."),
        ({"lr_schedule": "cosine"}, "'lr_schedule'"),
        ({"adaptive_clip": True, "clip_schedule": "linear"}, "adaptive_clip"),
        ({"hidden_sizes": []}, "hidden_sizes"),
        ({"num_envs": 0}, "'num_envs' = 0"),
    ],
)
def test_out_of_range_values_are_rejected_by_name(changes, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("'", "'")):
        replace(ControlConfig(), **changes)


def test_unknown_and_ill_typed_fields_name_the_source():
    with pytest.raises(ConfigError, match=r"my\.yaml: unknown config field 'learnig_rate' \(did you mean 'learning_rate'\?\)"):
        from_mapping(ControlConfig, {"learnig_rate": 1e-3}, "my.yaml")
    with pytest.raises(ConfigError, match=r"field 'num_envs': expected an integer, got 'many'"):
        from_mapping(ControlConfig, {"num_envs": "many"}, "my.yaml")
    with pytest.raises(ConfigError, match="expected true or false"):
        from_mapping(ControlConfig, {"normalize_obs": "sometimes"}, "my.yaml")


def test_overrides_parse_as_yaml_scalars():
    data = parse_overrides(["learning_rate=1e-3", "hidden_sizes=[32, 32]", "normalize_obs=true", "clip_range_vf=null"])
    cfg = from_mapping(ControlConfig, data)
    assert cfg.learning_rate == 1e-3 and cfg.hidden_sizes == [32, 32]
    assert cfg.normalize_obs is True and cfg.clip_range_vf is None
    with pytest.raises(ConfigError, match="expected key=value"):
        parse_overrides(["learning_rate"])


def test_yaml_errors_name_file_and_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("num_envs: 4\nclip_range: [0.2\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml, line \d+: invalid YAML"):
        load_yaml(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        load_yaml(tmp_path / "missing.yaml")
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_yaml(listy)


def test_every_preset_builds_a_valid_config():
    presets = list_presets()
    for required in ("CartPole-v1", "Acrobot-v1", "Pendulum-v1", "LunarLander-v3", "HalfCheetah-v5", "Hopper-v5", "Walker2d-v5"):
        assert required in presets
    for name in presets:
        cfg = from_mapping(ControlConfig, load_preset(name), f"preset {name}")
        assert cfg.env_id

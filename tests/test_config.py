import dataclasses

import pytest

from ppokit.cli.train_config import is_multiagent
from ppokit.configuration import from_mapping, load_yaml, parse_overrides, replace
from ppokit.control.config import ControlConfig
from ppokit.control.presets import list_presets, load_preset
from ppokit.errors import ConfigError
from ppokit.multiagent import MultiAgentConfig


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
        ({"num_minibatches": 3, "num_steps": 512, "num_envs": 4}, "does not divide the batch size"),
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
        data = load_preset(name)
        # A multi-agent preset (mpe) builds the config `ppokit train` would build from it.
        cls = MultiAgentConfig if is_multiagent(data["env_id"], data) else ControlConfig
        cfg = from_mapping(cls, data, f"preset {name}")
        assert cfg.env_id
    assert is_multiagent(load_preset("mpe")["env_id"], load_preset("mpe"))


@pytest.mark.parametrize("changes,message", [
    ({"learning_rate": "fast"}, "'learning_rate': expected a number, got 'fast'"),
    ({"num_envs": 2.5}, "'num_envs': expected an integer"),
    ({"normalize_obs": "maybe"}, "'normalize_obs': expected true or false"),
    ({"env_kwargs": 3}, "'env_kwargs': expected a mapping"),
    ({"seed": -1}, "'seed' = -1 is invalid"),
    ({"torch_threads": 100_000}, "'torch_threads' = 100000 is invalid"),
])
def test_a_config_built_in_code_is_checked_when_built(changes, message):
    """Not deep inside learn() after the run directory exists (issue 13, section 4)."""
    with pytest.raises(ConfigError, match=message):
        ControlConfig(**changes)


def test_a_config_built_in_code_parses_what_yaml_would():
    config = ControlConfig(total_steps=1e5, learning_rate=1, hidden_sizes=(32, 32))
    assert config.total_steps == 100_000 and isinstance(config.total_steps, int)
    assert config.learning_rate == 1.0 and isinstance(config.learning_rate, float)
    assert config.hidden_sizes == [32, 32]


@pytest.mark.parametrize("changes,field", [
    ({"target_kl": -1.0}, "target_kl"), ({"lora_alpha": 0}, "lora_alpha"), ({"lora_dropout": 1.0}, "lora_dropout"),
    ({"clip_range_vf": 0.0}, "clip_range_vf"), ({"temperature": 0.0}, "temperature"), ({"kl_horizon": 0}, "kl_horizon"),
    ({"num_samples": -1}, "num_samples"), ({"missing_eos_penalty": -0.5}, "missing_eos_penalty"),
    ({"gamma": 1.5}, "gamma"), ({"clip_range": 1.0}, "clip_range"), ({"seed": -3}, "seed"),
    ({"torch_threads": 5000}, "torch_threads"), ({"total_updates": 2.5}, "total_updates"),
    ({"learning_rate": "high"}, "learning_rate"), ({"num_minibatches": 3}, "num_minibatches"),
])
def test_every_rlhf_field_is_range_checked(changes, field):
    from ppokit.rlhf.config import RLHFConfig

    with pytest.raises(ConfigError, match=f"config field '{field}'"):
        RLHFConfig(policy="some/model", **changes)
    for disabled in ("target_kl", "clip_range_vf", "score_clip", "missing_eos_penalty"):
        assert getattr(RLHFConfig(policy="some/model", **{disabled: None}), disabled) is None


def test_the_public_api_is_lazy_and_complete():
    """``from ppokit import ...`` names every trainer and config; importing the package loads no torch."""
    import ast
    import subprocess
    import sys

    code = ("import sys, ppokit; assert 'torch' not in sys.modules and 'gymnasium' not in sys.modules; "
            "from ppokit import *; print(sorted(n for n in ppokit.__all__ if not n.startswith('_')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert ast.literal_eval(out) == sorted(["PPO", "ControlConfig", "SeedGroup", "MultiAgentPPO", "MultiAgentConfig",
                                            "RLHFTrainer", "RLHFConfig", "SFTTrainer",
                                "SFTConfig", "RewardTrainer", "RewardConfig", "PPOKitError"])


def _declared(cls: type) -> dict[str, dataclasses.Field]:
    """The fields ``cls`` declares itself (not those a dataclass base declares)."""
    inherited = {f.name for base in cls.__mro__[1:] if dataclasses.is_dataclass(base) for f in dataclasses.fields(base)}
    return {f.name: f for f in dataclasses.fields(cls) if f.name not in inherited}


def test_a_field_several_configs_declare_is_declared_once_with_one_doc_and_one_rule():
    from collections import Counter

    from ppokit.config_fields import SHARED
    from ppokit.rlhf.config import LMRuntime, RewardConfig, RLHFConfig, SFTConfig

    classes = [ControlConfig, LMRuntime, RLHFConfig, SFTConfig, RewardConfig]
    declared = {cls: _declared(cls) for cls in classes}
    counts = Counter(name for fields in declared.values() for name in fields)
    for cls, fields in declared.items():
        for name, field in fields.items():
            assert field.metadata.get("help"), f"{cls.__name__}.{name} has no doc"
            if counts[name] > 1:
                assert field.metadata.get("shared") and field.metadata["help"] == SHARED[name][0], \
                    f"{cls.__name__}.{name} is declared by several configs: declare it with config_fields.shared"


@pytest.mark.parametrize("name, value", [("clip_range", 1.5), ("gamma", -0.1), ("num_epochs", 0), ("seed", -1),
                                         ("device", "tpu"), ("max_grad_norm", -1.0)])
def test_both_front_ends_refuse_a_shared_field_alike(name, value):
    from ppokit.rlhf.config import RLHFConfig

    messages = []
    for build in (lambda: ControlConfig(**{name: value}), lambda: RLHFConfig(policy="p", **{name: value})):
        with pytest.raises(ConfigError) as err:
            build()
        messages.append(str(err.value))
    assert messages[0] == messages[1] and f"config field {name!r} = {value!r} is invalid: must be " in messages[0]


def test_describe_gives_what_each_field_allows():
    from ppokit.configuration import describe

    rows = {row[0]: row for row in describe(ControlConfig)}
    assert rows["clip_range"][4] == "in (0, 1)"
    assert rows["loss"][4] == "'clip', 'penalty'"
    assert rows["target_kl"][4] == "positive or null"
    assert rows["env_kwargs"][4] == ""

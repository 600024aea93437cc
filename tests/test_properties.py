"""Property-based tests: the config and dataset parsers get random and hostile input, and must either
accept it or raise ppokit's own error type (a ConfigError, whose DataError subclass covers data files),
never crash with anything else."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from ppokit.configuration import from_mapping, load_yaml, merge_overrides
from ppokit.control.config import ControlConfig
from ppokit.errors import ConfigError, PPOKitError

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-10**20, max_value=10**20),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=20),
)
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(st.text(max_size=8), inner, max_size=4)),
                      max_leaves=8)
PPO_FIELDS = sorted(ControlConfig.__dataclass_fields__)
field_names = st.one_of(st.sampled_from(PPO_FIELDS), st.text(max_size=15))


@SETTINGS
@given(st.dictionaries(field_names, st.one_of(values, st.sampled_from(["[1, ", "{a: ", "nan", "-inf", "1e400"])), max_size=6))
@example({"hidden_sizes": "[64, "})
@example({"env_kwargs": "{a: [1"})
@example({"learning_rate": float("nan")})
@example({"clip_range": "inf"})
def test_ppo_config_from_any_mapping_is_built_or_refused_with_a_config_error(data):
    try:
        config = from_mapping(ControlConfig, data, "fuzz.yaml")
    except ConfigError as err:
        assert str(err)
    else:
        assert isinstance(config, ControlConfig)
        assert config.batch_size % config.num_minibatches == 0


@SETTINGS
@given(st.dictionaries(st.sampled_from(PPO_FIELDS), values, max_size=3))
def test_wrong_values_for_real_fields_are_named_in_the_error(data):
    try:
        from_mapping(ControlConfig, data, "fuzz.yaml")
    except ConfigError as err:
        assert any(name in str(err) for name in data) or "batch" in str(err) or "total_steps" in str(err), str(err)


yaml_text = st.one_of(
    st.text(max_size=200),
    st.lists(st.tuples(st.sampled_from(PPO_FIELDS + ["bogus", "- x", "&a", "*a", "!!python/object:os.system"]),
                       st.text(max_size=20)), max_size=6).map(lambda kv: "\n".join(f"{k}: {v}" for k, v in kv)),
    st.binary(max_size=100).map(lambda b: b.decode("latin-1")),
)


@SETTINGS
@given(yaml_text)
def test_config_files_with_any_text_load_or_raise_a_config_error(text):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "config.yaml"
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
        try:
            data = load_yaml(path)
            config = from_mapping(ControlConfig, data, str(path))
        except ConfigError as err:
            assert str(err)
        else:
            assert isinstance(config, ControlConfig)


@SETTINGS
@given(st.lists(st.text(max_size=30), max_size=5))
def test_set_overrides_parse_or_raise_a_config_error(pairs):
    try:
        data = merge_overrides(ControlConfig, {}, pairs)
        from_mapping(ControlConfig, data, "--set")
    except ConfigError as err:
        assert str(err)


def test_yaml_tags_that_would_build_python_objects_are_refused(tmp_path):
    path = tmp_path / "evil.yaml"
    path.write_text("env_id: !!python/object/apply:os.system ['touch pwned']\n")
    with pytest.raises(ConfigError, match="line 1"):
        load_yaml(path)
    assert not (tmp_path / "pwned").exists()


# ----------------------------------------------------------------------------- RLHF data and configs

rdata = pytest.importorskip("ppokit.rlhf.data")
rconfig = pytest.importorskip("ppokit.rlhf.config")

json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=12)),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=10,
)
rows = st.dictionaries(st.sampled_from(["prompt", "chosen", "rejected", "responses", "ranking", "response",
                                        "rating", "text", "other"]), json_values, max_size=5)
jsonl_lines = st.one_of(rows.map(json.dumps), json_values.map(json.dumps), st.text(max_size=40))


@SETTINGS
@given(st.lists(jsonl_lines, max_size=8), st.booleans())
def test_prompt_files_with_any_lines_load_or_raise_a_data_error(lines, skip_bad_rows):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "prompts.jsonl"
        path.write_text("\n".join(lines), encoding="utf-8", errors="surrogatepass")
        try:
            loaded = rdata.load(str(path), {"prompt": ("prompt", "text")}, skip_bad_rows)
        except rdata.DataError as err:
            assert str(path) in str(err) or "prompt" in str(err)
        else:
            assert all(isinstance(r["prompt"], str) and r["prompt"] for r in loaded.rows)


@SETTINGS
@given(st.lists(rows, max_size=8), st.sampled_from(["auto", "pairs", "rankings", "ratings"]),
       st.sampled_from(["pairs", "regression"]), st.booleans())
def test_preference_rows_in_any_shape_load_or_raise_a_data_error(data, fmt, ratings_as, skip_bad_rows):
    config = rconfig.RewardConfig(model="unused", format=fmt, ratings_as=ratings_as, skip_bad_rows=skip_bad_rows)
    try:
        kind, loaded = rdata.load_preferences(data, config)
    except rdata.DataError as err:
        assert str(err)
    else:
        assert kind in ("pairs", "ratings") and loaded.rows


@SETTINGS
@given(st.dictionaries(st.one_of(st.sampled_from(sorted(rconfig.RLHFConfig.__dataclass_fields__)), st.text(max_size=10)),
                       values, max_size=6))
def test_rlhf_config_from_any_mapping_is_built_or_refused_with_a_config_error(data):
    try:
        from_mapping(rconfig.RLHFConfig, {"policy": "some/model", **data}, "fuzz.yaml")
    except PPOKitError as err:
        assert isinstance(err, ConfigError) and str(err)


@pytest.mark.parametrize("field, value", [("learning_rate", float("nan")), ("clip_range", "inf"), ("gamma", "nan")])
def test_non_finite_numbers_are_refused_by_field(field, value):
    with pytest.raises(ConfigError, match=f"field '{field}'.*finite"):
        from_mapping(ControlConfig, {field: value}, "fuzz.yaml")

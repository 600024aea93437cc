"""``ppokit plot``: what is drawn comes from the runs' metrics, seeds of one config make one band."""

import json
import struct

import numpy as np
import pytest

from ppokit import PPO, ControlConfig
from ppokit.analysis.plots import CONTROL_PANELS, RLHF_PANELS, group, panels, plot_runs, read_run, series
from ppokit.cli.main import main
from ppokit.errors import CheckpointError, ConfigError

pytest.importorskip("matplotlib")


def _control(run_dir, seed=1, **kw):
    config = ControlConfig(env_id="CartPole-v1", num_envs=2, num_steps=64, num_minibatches=2, num_epochs=2,
                           total_steps=128 * 8, progress=False, tensorboard=False, eval_episodes=0, seed=seed, **kw)
    PPO(config).learn(run_dir=run_dir)
    return run_dir


def _rows(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _png_size(path):
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", head[16:24])


@pytest.fixture(scope="module")
def seeds(tmp_path_factory):
    root = tmp_path_factory.mktemp("seeds")
    return [_control(root / f"s{s}", seed=s) for s in (1, 2, 3)]


def test_one_run_is_drawn_as_logged(seeds):
    groups = group([read_run(seeds[0])])
    (curve,) = series(groups, "clip_fraction", "global_step")
    rows = _rows(seeds[0])
    np.testing.assert_array_equal(curve.x, [r["global_step"] for r in rows])
    np.testing.assert_array_equal(curve.mean, [r["clip_fraction"] for r in rows])
    assert curve.runs == 1 and curve.label == "CartPole-v1 · 1 seed"


def test_seeds_of_one_config_make_one_band(seeds):
    groups = group([read_run(p) for p in seeds])
    assert list(groups) == ["CartPole-v1 · 3 seeds"]
    (curve,) = series(groups, "entropy", "global_step")
    logged = [_rows(p) for p in seeds]
    each = np.stack([np.interp(curve.x, [r["global_step"] for r in rows], [r["entropy"] for r in rows])
                     for rows in logged])
    np.testing.assert_allclose(curve.mean, each.mean(0))
    np.testing.assert_allclose(curve.low, each.min(0))
    np.testing.assert_allclose(curve.high, each.max(0))
    assert curve.runs == 3 and (curve.high > curve.low).any()


def test_configs_that_differ_are_told_apart_by_the_fields_that_differ(seeds, tmp_path):
    other = _control(tmp_path / "lr", learning_rate=1e-3)
    labels = sorted(group([read_run(p) for p in [*seeds, other]]))
    assert labels == ["CartPole-v1 (learning_rate=0.0003) · 3 seeds", "CartPole-v1 (learning_rate=0.001) · 1 seed"]


def test_the_picture_has_the_control_panels(seeds, tmp_path):
    runs = [read_run(p) for p in seeds]
    titles = [title for title, _, _ in panels(runs)]
    assert titles == [t for _, t, _ in CONTROL_PANELS if not t.startswith("evaluation")]  # no eval_every here
    out = plot_runs(seeds, tmp_path / "pics" / "curves.png")
    width, height = _png_size(out)
    assert width >= 1200 and height >= 500  # 4 columns x 2 rows of panels


def test_rlhf_runs_get_score_kl_and_the_frontier(tmp_path, tiny_lm):
    from ppokit.rlhf.config import RLHFConfig
    from ppokit.rlhf.ppo.trainer import RLHFTrainer
    from tests.rlhf.helpers import PROMPTS

    config = RLHFConfig(policy=tiny_lm, rewards=["tests.rlhf.helpers:pleasant_minus_unpleasant"], total_updates=3,
                        batch_size=4, max_new_tokens=4, progress=False, tensorboard=False, device="cpu",
                        sample_every=0)
    RLHFTrainer(config, prompts=PROMPTS, run_dir=tmp_path / "run").learn()
    drawn = panels([read_run(tmp_path / "run")])
    assert [t for t, _, _ in drawn] == [t for _, t, _ in RLHF_PANELS]
    frontier = drawn[2][2][0]
    rows = _rows(tmp_path / "run")
    np.testing.assert_allclose(frontier.x, sorted(r["kl"] for r in rows))
    assert main(["plot", str(tmp_path / "run"), "-o", str(tmp_path / "rlhf.png")]) == 0
    assert _png_size(tmp_path / "rlhf.png")[0] >= 900


def test_each_of_several_reward_sources_gets_its_own_panel(tmp_path, tiny_lm):
    from ppokit.rlhf.config import RLHFConfig
    from ppokit.rlhf.ppo.trainer import RLHFTrainer
    from tests.rlhf.helpers import PROMPTS

    config = RLHFConfig(policy=tiny_lm, rewards=["tests.rlhf.helpers:pleasant_minus_unpleasant",
                                                 "ppokit.rlhf.demo:hidden_rule_reward"], reward_weights=[1.0, 0.0],
                        total_updates=2, batch_size=4, max_new_tokens=4, progress=False, tensorboard=False,
                        device="cpu", sample_every=0)
    RLHFTrainer(config, prompts=PROMPTS, run_dir=tmp_path / "run").learn()
    drawn = {t: curves for t, _, curves in panels([read_run(tmp_path / "run")])}
    assert list(drawn)[3:] == ["reward 0: tests.rlhf.helpers:pleasant_minus_unpleasant (weight 1)",
                               "reward 1: ppokit.rlhf.demo:hidden_rule_reward (weight 0)"]
    rows = _rows(tmp_path / "run")
    (hidden,) = drawn["reward 1: ppokit.rlhf.demo:hidden_rule_reward (weight 0)"]
    np.testing.assert_allclose(hidden.mean, [r["score_1"] for r in rows])
    (total,) = drawn["reward score vs PPO update"]
    np.testing.assert_allclose(total.mean, [r["score_0"] for r in rows])  # weight 0: the total is source 0 alone


def test_bad_input_is_one_line_errors(seeds, tmp_path, capsys):
    with pytest.raises(CheckpointError, match="not a ppokit run directory"):
        read_run(tmp_path / "nowhere")
    (tmp_path / "sft").mkdir()
    (tmp_path / "sft" / "config.yaml").write_text("model: m\ndata: d.jsonl\nresponse_column: response\n")
    (tmp_path / "sft" / "metrics.jsonl").write_text("")
    with pytest.raises(ConfigError, match="a sft run has no PPO curves"):
        read_run(tmp_path / "sft")
    rlhf_like = tmp_path / "rlhf"
    rlhf_like.mkdir()
    (rlhf_like / "config.yaml").write_text("policy: p\ntotal_updates: 3\n")
    (rlhf_like / "metrics.jsonl").write_text('{"update": 1, "score": 0.1, "kl": 0.0}\n')
    with pytest.raises(ConfigError, match="cannot share a picture"):
        panels([read_run(seeds[0]), read_run(rlhf_like)])
    assert main(["plot", str(tmp_path / "nowhere"), "-o", str(tmp_path / "x.png")]) == 2
    assert "nowhere" in capsys.readouterr().err

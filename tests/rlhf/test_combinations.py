"""The feature matrix of RLHF PPO: advantage estimators × value options × LoRA × precision × G given
or left to the estimator. Every combination runs one update on the tiny model or is refused when the
config is built, in one line naming the conflict; all pairs of values are covered (tests/pairwise.py)
and the full product is built as configs."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from ppokit.configuration import adapted_notes
from ppokit.errors import PPOKitError
from ppokit.rlhf.config import GROUP_GENERATIONS, RLHFConfig
from tests.pairwise import all_pairs
from tests.rlhf.helpers import PROMPTS

pytest.importorskip("transformers")
pytest.importorskip("peft")

AXES: dict[str, list[Any]] = {
    "advantage": ["gae", "grpo", "rloo", "reinforce_pp"],
    "value_model": ["separate", "head", "lora"],
    "lora": [False, True],
    "precision": ["float32", "bfloat16", "autocast_bf16", "autocast_fp16"],
    "num_generations": [None, 2],
}
PRECISION = {"float32": {"dtype": "float32"}, "bfloat16": {"dtype": "bfloat16"},
             "autocast_bf16": {"dtype": "float32", "mixed_precision": "bf16"},
             "autocast_fp16": {"dtype": "float32", "mixed_precision": "fp16"}}


def expected_refusals(combo: dict[str, Any]) -> list[str]:
    """Why a combination is refused (part of its one-line message), or [] when it must run."""
    if combo["advantage"] != "gae" and combo["value_model"] != "separate":
        return ["trains no critic"]  # a critic option set for an estimator that has no critic
    return []


def _values(combo: dict[str, Any], policy: str) -> dict[str, Any]:
    values = dict(policy=policy, rewards=["tests.rlhf.helpers:pleasant_minus_unpleasant"], total_updates=1,
                  batch_size=4, max_new_tokens=4, progress=False, tensorboard=False, torch_threads=1, device="cpu",
                  seed=0, sample_every=0, advantage=combo["advantage"], lora=combo["lora"],
                  **PRECISION[combo["precision"]])
    if combo["value_model"] != "separate":
        values["value_model"] = combo["value_model"]
    if combo["num_generations"] is not None:
        values["num_generations"] = combo["num_generations"]
    return values


def test_the_full_product_builds_or_is_refused_in_one_line():
    for values in itertools.product(*AXES.values()):
        combo = dict(zip(AXES, values))
        expected = expected_refusals(combo)
        try:
            config = RLHFConfig(**_values(combo, "some/model"))
        except PPOKitError as err:
            assert expected and any(r in str(err) for r in expected) and "\n" not in str(err), (combo, str(err))
            continue
        assert not expected, (combo, expected)
        if combo["advantage"] in ("grpo", "rloo") and combo["num_generations"] is None:
            # Left unset, G adapts to the estimator, and the run says so.
            assert config.num_generations == GROUP_GENERATIONS
            assert any(note.startswith("num_generations") for note in adapted_notes(config))


COMBOS = [c for c in all_pairs(AXES) if not expected_refusals(c)]


@pytest.mark.parametrize("combo", COMBOS, ids=["-".join(map(str, c.values())) for c in COMBOS])
def test_each_combination_runs_one_update(combo, tiny_lm, tmp_path):
    from ppokit.rlhf.ppo.trainer import RLHFTrainer

    trainer = RLHFTrainer(RLHFConfig(**_values(combo, tiny_lm)), prompts=PROMPTS, run_dir=tmp_path / "run")
    record = trainer.update()
    assert record["score"] == record["score"]  # a finite update, not NaN
    no_critic = trainer.models.critic is None and trainer.models.with_head is None
    assert no_critic == (combo["advantage"] != "gae")

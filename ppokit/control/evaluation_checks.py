"""Checks on a run's final evaluation against what training saw.

A deterministic evaluation plays the policy's most likely action. Where that action loops (a
MiniGrid agent turning in place, a door it never opens) the evaluation can score nothing while the
same policy, sampling, solves the task in training. :func:`deterministic_gap` tells that case
apart from noise: the evaluation's mean return is far below the recent training episodes' (which
sampled their actions), by a margin scaled by the training returns' spread.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from gymnasium import spaces

#: Fewer recent training episodes, or evaluation episodes, than these say too little to compare.
MIN_TRAINING_EPISODES = 20
MIN_EVAL_EPISODES = 5
#: How far below the training mean is "far": this many training standard deviations, at least
#: this many standard errors of the difference, and at least this share of the mean's size.
SPREADS = 2.0
STANDARD_ERRORS = 3.0
SHARE_OF_MEAN = 0.1

#: What to run instead, named in the warning.
HOW_TO_SAMPLE = ("evaluate sampling actions: `ppokit eval {run_dir} --stochastic` (Python: "
                 "`agent.evaluate(deterministic=False)`), or train with `--set eval_deterministic=false` "
                 "so eval.json samples")


def samples_discrete_actions(space: spaces.Space) -> bool:
    """Whether a policy over ``space`` picks any part of its action by an argmax over choices
    (Discrete, MultiDiscrete, MultiBinary, or a Tuple/Dict holding one), where looping is common."""
    if isinstance(space, (spaces.Discrete, spaces.MultiDiscrete, spaces.MultiBinary)):
        return True
    if isinstance(space, spaces.Tuple):
        return any(samples_discrete_actions(s) for s in space.spaces)
    if isinstance(space, spaces.Dict):
        return any(samples_discrete_actions(s) for s in space.spaces.values())
    return False


def deterministic_gap(result: Mapping[str, Any], training_returns: Sequence[float],
                      action_space: spaces.Space, run_dir: str = "RUN_DIR") -> dict[str, Any] | None:
    """The fields to add to eval.json (with ``deterministic_warning``, the message) when a
    deterministic evaluation ``result`` is far below the recent ``training_returns``; else None.

    Far below means: ``eval_mean < train_mean − margin`` with ``margin`` the largest of 2 training
    standard deviations, 3 standard errors of the difference of the two means, and 10 % of
    ``|train_mean|``. Only for deterministic evaluations of policies with a discrete part, over at
    least 5 evaluation and 20 recent training episodes."""
    returns = result.get("returns") or []
    if not result.get("deterministic") or not samples_discrete_actions(action_space):
        return None
    train = np.asarray([r for r in training_returns if math.isfinite(r)], dtype=np.float64)
    evaluated = np.asarray([r for r in returns if isinstance(r, (int, float)) and math.isfinite(r)], dtype=np.float64)
    if train.size < MIN_TRAINING_EPISODES or evaluated.size < MIN_EVAL_EPISODES:
        return None
    train_mean, train_std = float(train.mean()), float(train.std(ddof=1))
    eval_mean = float(evaluated.mean())
    standard_error = math.sqrt(train.var(ddof=1) / train.size + evaluated.var(ddof=1) / evaluated.size)
    margin = max(SPREADS * train_std, STANDARD_ERRORS * standard_error, SHARE_OF_MEAN * abs(train_mean))
    if not eval_mean < train_mean - margin:
        return None
    message = (f"the deterministic evaluation's mean return {eval_mean:.4g} ({evaluated.size} episodes) is far "
               f"below the last {train.size} training episodes' {train_mean:.4g} ± {train_std:.4g} (sampled "
               f"actions): the policy's most likely action may loop where sampling works; "
               + HOW_TO_SAMPLE.format(run_dir=run_dir))
    return {"deterministic_warning": message, "training_mean_return": train_mean,
            "training_std_return": train_std, "training_episodes": int(train.size)}

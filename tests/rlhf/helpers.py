"""Reward functions importable as 'tests.rlhf.helpers:NAME' by the RLHF tests."""

from ppokit.rlhf.demo import NOUNS, PLEASANT, UNPLEASANT

#: One prompt per noun of the demo's language.
PROMPTS = [{"prompt": f"describe the {noun} :"} for noun in NOUNS]


def pleasant_minus_unpleasant(prompts, completions):
    return [float(sum(w in PLEASANT for w in c.split()) - sum(w in UNPLEASANT for w in c.split())) for c in completions]


def wrong_length(prompts, completions):
    return [0.0]


def not_finite(prompts, completions):
    return [float("nan")] * len(completions)


def raises(prompts, completions):
    raise RuntimeError("boom")


not_callable = 3

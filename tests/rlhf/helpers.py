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


# --- concurrent reward functions (tests/rlhf/test_reward_sources.py) ---

import os  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402

#: Four chunks called concurrently all reach it; called one after another, the first waits in vain.
FOUR_AT_ONCE = threading.Barrier(4, timeout=20)
#: The threads the chunks of `meets_three_others` ran on, in call order.
CHUNK_THREADS = []
#: Set by a test to let `waits_for_release` return.
RELEASE = threading.Event()


def meets_three_others(prompts, completions):
    """Returns the word counts, after all four concurrent chunks have arrived (timing-free)."""
    CHUNK_THREADS.append(threading.current_thread().name)
    FOUR_AT_ONCE.wait()
    time.sleep(0.01)
    return [float(len(c.split())) for c in completions]


def waits_for_release(prompts, completions):
    RELEASE.wait(60)
    return [0.0] * len(completions)


def length_unless_in_this_process(prompts, completions):
    """len(completion), or -1 when called in the process whose id is the prompt (the caller's)."""
    return [-1.0 if p == str(os.getpid()) else float(len(c)) for p, c in zip(prompts, completions)]


def sleeps_for_the_prompt(prompts, completions):
    time.sleep(float(prompts[0]))
    return [0.0] * len(completions)

"""``tests.seed_votes.median_passes``: the learning tests' median over seeds, stopped once it is decided."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from tests.seed_votes import median_passes


@pytest.mark.parametrize("n", [1, 3, 5])
def test_the_verdict_is_the_full_medians_for_every_set_of_results(n):
    for results in itertools.product([100.0, 500.0], repeat=n):
        ran: list[int] = []
        verdict, seen = median_passes(lambda seed, ran=ran, results=results: ran.append(seed) or results[seed],
                                      range(n), lambda r: r >= 475)
        assert verdict == bool(np.median(results) >= 475), results
        assert ran == list(range(len(ran))) and seen == {s: results[s] for s in ran}  # in order, each once
        decided = sum(r >= 475 for r in results[:len(ran)])
        assert max(decided, len(ran) - decided) == n // 2 + 1  # stopped exactly when a majority agreed


def test_an_even_number_of_seeds_is_refused():
    with pytest.raises(ValueError, match="odd number of seeds"):
        median_passes(float, [1, 2], lambda r: r > 0)

"""A learning test's median over seeds, with only as many training runs as decide it.

The median of an odd number of results passes a threshold exactly when more than half of them do.
So once a majority has passed, or a majority has failed, the remaining seeds cannot change the
verdict: they are not run. The verdict is the full median's for every possible set of results
(``tests/test_seed_votes.py`` checks all of them); only the time differs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence


def median_passes(run: Callable[[int], float], seeds: Sequence[int],
                  passes: Callable[[float], bool]) -> tuple[bool, dict[int, float]]:
    """``(whether the median of run(seed) over seeds passes, the results that were computed)``.

    ``passes`` must be a threshold test (``lambda r: r >= 475``): monotone in the result, so the median
    passes exactly when a majority of results do. ``seeds`` run in order; their count must be odd.
    """
    if len(seeds) % 2 == 0:
        raise ValueError(f"an odd number of seeds has one median; got {len(seeds)}")
    majority = len(seeds) // 2 + 1
    results: dict[int, float] = {}
    passed = failed = 0
    for seed in seeds:
        results[seed] = result = run(seed)
        if passes(result):
            passed += 1
        else:
            failed += 1
        if passed == majority or failed == majority:
            break
    return passed == majority, results

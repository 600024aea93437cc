"""All-pairs combinations for the feature matrices (tests/control/test_combinations.py,
tests/rlhf/test_combinations.py): every pair of values of any two axes appears in at least one
combination, in far fewer runs than the full product. Greedy and deterministic (no random choice),
so a failing combination has the same index on every machine."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import Any


def all_pairs(axes: dict[str, Sequence[Any]], allowed: Callable[[dict[str, Any]], bool] = lambda c: True) -> list[dict[str, Any]]:
    """Combinations of ``axes`` (name: values) covering every pair of values of two axes that some
    ``allowed`` combination holds. Each combination is chosen as the one, among all allowed, that covers
    the most pairs not yet covered (the first such in product order)."""
    names = list(axes)
    candidates = [dict(zip(names, values)) for values in itertools.product(*(axes[n] for n in names))]
    candidates = [c for c in candidates if allowed(c)]

    def pairs(combo: dict[str, Any]) -> set[tuple[str, Any, str, Any]]:
        return {(a, repr(combo[a]), b, repr(combo[b])) for a, b in itertools.combinations(names, 2)}

    covers = [pairs(c) for c in candidates]
    uncovered = set().union(*covers) if covers else set()
    chosen: list[dict[str, Any]] = []
    while uncovered:
        best = max(range(len(candidates)), key=lambda i: len(covers[i] & uncovered))
        chosen.append(candidates[best])
        uncovered -= covers[best]
    return chosen

"""The PPO debugging checklist turned into live warnings, for both front ends.

:func:`health_warnings` checks one update's statistics; :class:`HealthMonitor` keeps the state across
updates (how many updates in a row a warning held, which were already reported, the starting
entropy), reports each kind of trouble once on the console when it persists, and is saved with a
checkpoint so a resumed run warns exactly as an uninterrupted one would.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any

log = logging.getLogger("ppokit")

#: Consecutive updates a check must fail before it is reported on the console.
WARN_AFTER = 3
#: Checks reported on the console the first time they fail: they mean the update did not happen.
WARN_AT_ONCE = frozenset({"nonfinite_skips"})
#: The share of skipped minibatches above which an update is reported as (mostly) not trained.
MAX_SKIPPED_SHARE = 0.1


def health_warnings(
    stats: Mapping[str, float],
    *,
    progress: float,
    initial_entropy: float | None,
    target_kl: float | None,
    normalize_reward: bool,
    shared_trunk: bool = True,
) -> list[tuple[str, str]]:
    """Check one update's statistics against the usual PPO debugging checklist.

    Returns ``(key, message)`` pairs; ``key`` lets the caller report each kind of trouble once.
    ``progress`` is the fraction of training done. The value-scale check only applies to a shared
    trunk, where the value gradient competes with the policy gradient for the same weights.
    """
    found: list[tuple[str, str]] = []
    skipped = stats.get("skipped_minibatches", 0.0)
    total = skipped + stats.get("minibatch_steps", 0.0)
    if total > 0 and skipped / total > MAX_SKIPPED_SHARE:
        found.append((
            "nonfinite_skips",
            f"{skipped:.0f} of {total:.0f} minibatches had a non-finite loss or gradient and were skipped "
            "(on_nonfinite: skip): this update trained on little or nothing; look for NaN/inf in the rewards "
            "or observations, or lower the learning rate",
        ))
    clip_fraction = stats.get("clip_fraction", 0.0)
    if clip_fraction > 0.6:
        found.append((
            "clip_fraction",
            f"clip fraction {clip_fraction:.2f} > 0.6: most samples hit the clip, so the step is too "
            "big for the trust region; lower the learning rate or the number of epochs, or raise "
            "clip_range",
        ))
    entropy = stats.get("entropy")
    if (
        entropy is not None
        and initial_entropy is not None
        and progress < 0.25
        and initial_entropy > 0
        and entropy < 0.1 * initial_entropy
    ):
        found.append((
            "entropy_collapse",
            f"entropy fell to {entropy:.3g} from {initial_entropy:.3g} in the first quarter of "
            "training: the policy stopped exploring early; raise ent_coef or lower the learning rate",
        ))
    value_loss = stats.get("value_loss", 0.0)
    policy_loss = abs(stats.get("policy_loss", 0.0))
    if shared_trunk and value_loss > 100.0 * max(policy_loss, 1e-3) and value_loss > 10.0 and not normalize_reward:
        found.append((
            "value_scale",
            f"value loss {value_loss:.3g} dwarfs the policy loss {policy_loss:.3g}: the value "
            "gradient dominates a shared optimiser; set normalize_reward=true (or lower vf_coef)",
        ))
    approx_kl = stats.get("approx_kl_k3", 0.0)
    kl_limit = 4.0 * target_kl if target_kl else 0.2
    if math.isfinite(approx_kl) and approx_kl > kl_limit:
        found.append((
            "kl",
            f"approx KL {approx_kl:.3g} is far above {'the target' if target_kl else 'the usual range'}"
            f" ({kl_limit:.3g}): updates move the policy too far; lower the learning rate or epochs",
        ))
    ev = stats.get("explained_variance", float("nan"))
    if math.isfinite(ev) and ev < -0.5 and progress > 0.2:
        found.append((
            "value_fit",
            f"explained variance {ev:.2f} < 0 after {progress:.0%} of training: the value function "
            "predicts worse than a constant; check reward scale, gamma, or the value learning rate",
        ))
    return found


class HealthMonitor:
    """Runs :func:`health_warnings` after every update and reports what persists.

    Every warning goes into the update's metrics row (``warnings``); a kind of trouble is logged to
    the console once, when it has held for ``warn_after`` updates in a row: one bad update is often
    noise.
    """

    def __init__(self, *, target_kl: float | None, normalize_reward: bool, shared_trunk: bool,
                 warn_after: int = WARN_AFTER) -> None:
        self.target_kl = target_kl
        self.normalize_reward = normalize_reward
        self.shared_trunk = shared_trunk
        self.warn_after = warn_after
        self.initial_entropy: float | None = None
        self.warned: set[str] = set()
        self.streaks: dict[str, int] = {}

    def check(self, record: dict[str, Any], progress: float, update: int) -> list[str]:
        """Check ``record`` (one update's metrics) at ``progress`` (fraction of training done);
        adds ``record["warnings"]`` when there are any and returns them."""
        if self.initial_entropy is None and math.isfinite(record.get("entropy", float("nan"))):
            self.initial_entropy = float(record["entropy"])
        found = health_warnings(
            record, progress=progress, initial_entropy=self.initial_entropy, target_kl=self.target_kl,
            normalize_reward=self.normalize_reward, shared_trunk=self.shared_trunk,
        )
        messages = []
        for key, message in found:
            messages.append(message)
            self.streaks[key] = self.streaks.get(key, 0) + 1
            at = 1 if key in WARN_AT_ONCE else self.warn_after
            if self.streaks[key] == at and key not in self.warned:
                self.warned.add(key)
                log.warning("update %d: %s", update, message)
        seen = {key for key, _ in found}
        for key in list(self.streaks):
            if key not in seen:
                del self.streaks[key]
        if messages:
            record["warnings"] = messages
        return messages

    def state_dict(self) -> dict[str, Any]:
        return {"initial_entropy": self.initial_entropy, "warned": sorted(self.warned), "streaks": dict(self.streaks)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        entropy = state["initial_entropy"]
        self.initial_entropy = None if entropy is None else float(entropy)
        self.warned = {str(k) for k in state["warned"]}
        self.streaks = {str(k): int(v) for k, v in state["streaks"].items()}

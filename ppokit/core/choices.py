"""The named choices of the core's settings, each written once.

This module imports nothing heavy, so a config dataclass can type its choice fields with these
``Literal`` types (and ``ppokit --help`` can describe them) without importing torch.
"""

from __future__ import annotations

from typing import Literal

#: The surrogate objective: PPO-Clip, or PPO-Penalty (r·A − β·KL).
Loss = Literal["clip", "penalty"]
#: How a value anneals over training (:mod:`ppokit.core.schedules`).
ScheduleKind = Literal["constant", "linear"]
#: What a non-finite loss or gradient does: stop the run with an error, or skip that minibatch.
OnNonFinite = Literal["stop", "skip"]
#: Per-token KL estimators (:mod:`ppokit.core.kl`).
KLEstimator = Literal["k1", "k3"]
#: The torch.distributed backend of a multi-process run: NCCL on CUDA and gloo on a CPU ('auto'), or one named.
DistBackend = Literal["auto", "gloo", "nccl"]

"""Data-parallel control training: what a run does differently when it is one of several processes.

Each process (rank) runs its own envs, seeded apart, and collects its share of the batch; the update
averages gradients over the ranks (:mod:`ppokit.core.update` with a
:class:`~ppokit.core.collective.Collective`), so the policy and the optimiser stay identical on every
rank without being sent. This module holds the rest:

- how many envs a rank runs, and the global batch (``num_envs_scope``);
- one starting model (rank 0's parameters, broadcast), then a separate random stream per rank;
- the normalisers: after every rollout each rank's new statistics are merged, in rank order, into
  the statistics every rank started the rollout with, so all ranks normalise the same way;
- the metrics row: episode figures over every rank's episodes;
- the run directory: opened by rank 0 alone (an error there is raised on every rank); the other
  ranks log nothing;
- checkpoints: each rank's env, collector and RNG state, gathered into rank 0's ``resume.json``.

With one process none of this runs and a run is what it always was.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ppokit import runtime
from ppokit.control.config import ControlConfig
from ppokit.control.rollout.storage import EpisodeLog
from ppokit.core.collective import Collective
from ppokit.core.running_stats import RunningMeanStd
from ppokit.errors import ConfigError


def local_num_envs(config: ControlConfig, collective: Collective) -> int:
    """The envs this rank runs: ``num_envs``, or with ``num_envs_scope='global'`` its share of them."""
    world = collective.world_size
    if config.num_envs_scope == "rank" or world == 1:
        local = config.num_envs
    elif config.num_envs % world:
        raise ConfigError(f"config field 'num_envs' = {config.num_envs} with num_envs_scope = 'global' must be a "
                          f"multiple of the {world} processes")
    else:
        local = config.num_envs // world
    if world > 1 and (local * config.num_steps) % config.num_minibatches:
        raise ConfigError(f"config field 'num_minibatches' = {config.num_minibatches} must divide each process's "
                          f"batch, {local} envs * {config.num_steps} steps = {local * config.num_steps}")
    return local


def start(collective: Collective, policy: torch.nn.Module, seed: int,
          normalisers: tuple[RunningMeanStd | None, ...]) -> None:
    """Make every rank start from rank 0's model, then give each rank its own random stream."""
    if not collective.active:
        return
    collective.broadcast_tensors_([*policy.parameters(), *policy.buffers()])
    runtime.seed_everything(runtime.rank_seed(seed, collective.rank))
    for rms in normalisers:
        if rms is not None:
            rms.share_updates()


def env_seed(config: ControlConfig, num_envs: int, rank: int, num_updates: int) -> int:
    """The reset seed of a rank's envs: rank ``r``'s ``num_envs`` envs take the seeds after rank
    ``r - 1``'s, so N ranks of n envs start the episodes one process of N·n envs would."""
    return config.seed + rank * num_envs + num_updates


def sync_normalisers(collective: Collective, normalisers: tuple[RunningMeanStd | None, ...]) -> None:
    """Merge every rank's statistics of the latest rollout into the normalisers (after collect)."""
    if collective.active:
        for rms in normalisers:
            if rms is not None:
                merge_across(rms, collective)


def merge_across(rms: RunningMeanStd, collective: Collective) -> None:
    """The statistics as of the last merge plus every rank's updates since, in rank order."""
    count, mean, var = rms.pending_moments()
    rows = collective.gather_rows(torch.from_numpy(np.concatenate([[count], mean.ravel(), var.ravel()])))
    size = mean.size
    rms.merge_pending([(float(row[0]), row[1:1 + size].numpy().reshape(mean.shape),
                        row[1 + size:].numpy().reshape(mean.shape)) for row in rows])


def episode_figures(episodes: EpisodeLog, collective: Collective) -> dict[str, Any]:
    """The metrics row's episode figures: the mean return and length of the recent episodes of
    every rank (each keeps its last 100), and the episodes finished in this rollout on all ranks."""
    returns, lengths = episodes.returns, episodes.lengths
    sums = collective.sum_floats(float(np.sum(returns)) if returns else 0.0, float(len(returns)),
                                 float(np.sum(lengths)) if lengths else 0.0, float(len(lengths)),
                                 float(len(episodes.last[0])))
    return_sum, n_returns, length_sum, n_lengths, ended = sums
    return {
        "episodic_return": return_sum / n_returns if n_returns else None,
        "episodic_length": length_sum / n_lengths if n_lengths else None,
        "episodes": int(ended),
    }

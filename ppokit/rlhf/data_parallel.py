"""Data-parallel RLHF: what the three stages do differently when they run as several processes.

Each process (rank) holds the whole model (or, with ``sharding: fsdp``, its shard: :mod:`.sharding`)
and takes its share of every global batch: ``batch_size`` counts the prompts (or rows, or pairs) of
one update over all processes. A rank generates, scores and trains on its rows; the update averages
the gradients over the ranks (:class:`~ppokit.core.optim.AveragedGradients`, with each rank's loss
weighted by its share of the valid tokens, :mod:`ppokit.core.update`), so N ranks take the update one
process would take on their union. This module holds the rest:

- the checks that the batch splits evenly, and each rank's slice of it;
- one starting model (rank 0's trained weights, broadcast), then a separate random stream per rank;
- the metrics row: every figure of the batch (scores, KL, lengths, values) over all ranks' rows;
- the run directory: opened by rank 0 alone (an error there is raised on every rank);
- checkpoints: each rank's random state, gathered into rank 0's ``resume.json``; a checkpoint is
  resumed by as many processes as wrote it.

With one process none of this runs and a run is what it always was.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from torch import Tensor, nn

from ppokit import runtime as _runtime
from ppokit.core.collective import Collective, rank_state
from ppokit.errors import CheckpointError, ConfigError
from ppokit.io.rng import set_rng_state

if TYPE_CHECKING:
    from ppokit.rlhf.config import RLHFConfig
    from ppokit.rlhf.ppo.advantages import TokenAdvantages
    from ppokit.rlhf.ppo.rollout import RolloutBatch

T = TypeVar("T")


def check_batch(config: RLHFConfig, collective: Collective) -> None:
    """``batch_size`` prompts must split evenly among the processes, and each share into the minibatches."""
    world = collective.world_size
    if world == 1:
        return
    if config.batch_size % world:
        raise ConfigError(f"config field 'batch_size' = {config.batch_size} must be a multiple of the {world} processes "
                          "(it counts the prompts of one update over all of them)")
    local = config.batch_size // world
    if local % config.num_minibatches:
        raise ConfigError(f"config field 'num_minibatches' = {config.num_minibatches} must divide each process's share "
                          f"of the batch, batch_size {config.batch_size} / {world} processes = {local}")


def local_slice(rows: Sequence[T], collective: Collective) -> list[T]:
    """This rank's contiguous share of ``rows``: rank ``r`` of ``W`` takes ``rows[r·n/W : (r+1)·n/W]``
    (sizes differ by at most one; a rank may get none when there are fewer rows than ranks)."""
    n, world, rank = len(rows), collective.world_size, collective.rank
    return list(rows[rank * n // world:(rank + 1) * n // world])


def start(trainable: nn.Module, seed: int, collective: Collective) -> None:
    """Make every rank start from rank 0's trained weights (anything initialised at random, a new
    head or a LoRA adapter, included), then give each rank its own random stream."""
    if not collective.active:
        return
    collective.broadcast_tensors_([p for p in trainable.parameters() if p.requires_grad])
    _runtime.seed_everything(_runtime.rank_seed(seed, collective.rank))


def batch_figures(batch: RolloutBatch, adv: TokenAdvantages, kl_coef: float, collective: Collective,
                  elapsed: float) -> dict[str, float]:
    """The metrics row's figures of the batch over every rank's rows (the one-process row's
    definitions: means over completions, or over valid tokens). Its ``entropy`` is the update's
    (``run_epochs`` averages it over the ranks), not the rollout's. ``kl_coef``: β of the KL in the
    reward (0 when it is a loss term)."""
    mask = batch.mask
    maskf = mask.to(adv.kl.dtype)
    kl_seq = adv.kl.sum(-1)
    parts = sorted(batch.score_parts)
    n_local = float(batch.scores.numel())
    sums = collective.sum_floats(
        n_local, float(maskf.sum()), float(batch.scores.sum()), batch.raw_score_mean * n_local, float(kl_seq.sum()),
        float((-kl_coef * adv.kl).sum()), float(mask.sum(-1).float().sum()),
        float(batch.sequences.has_eos.float().sum()), float((adv.values * maskf).sum()),
        *(batch.score_parts[k] * n_local for k in parts),
    )
    n, tokens, score, raw, kl, non_score, lengths, eos, values = sums[:9]
    n, tokens = max(n, 1.0), max(tokens, 1.0)
    figures = {
        "score": score / n, "score_raw": raw / n, "kl": kl / n, "non_score_reward": non_score / n,
        "total_reward": (score + non_score) / n, "response_length": lengths / n,
        "eos_rate": eos / n, "value_mean": values / tokens,
        "explained_variance": explained_variance(adv.values, adv.returns, mask, collective),
        "tokens_per_s": sums[1] / max(elapsed, 1e-9),
    }
    figures.update({k: v / n for k, v in zip(parts, sums[9:])})
    return figures


def explained_variance(predicted: Tensor, target: Tensor, mask: Tensor, collective: Collective) -> float:
    """:func:`ppokit.core.diagnostics.explained_variance` over every rank's valid entries."""
    of_target, of_error = collective.moments_of_parts([(target, mask), (target - predicted, mask)])  # one exchange
    var_y = of_target[3]
    if float(var_y) == 0.0:
        return float("nan")
    return float(1.0 - of_error[3] / var_y)


def gather_samples(samples: tuple[list[str], list[str], list[float]],
                   collective: Collective) -> tuple[list[str], list[str], list[float]]:
    """Every rank's prompts, completions and scores, in rank order (the one-process batch's order)."""
    if not collective.active:
        return samples
    gathered = collective.gather_objects(samples)
    return ([p for g in gathered for p in g[0]], [c for g in gathered for c in g[1]], [s for g in gathered for s in g[2]])


def run_path(collective: Collective, path: str | Path) -> Path:
    """Rank 0's run directory (a default name holds the time, which the ranks would not agree on)."""
    return Path(collective.broadcast_object(str(path)))


def restore_rng(state: Mapping[str, Any], collective: Collective, where: Path) -> None:
    """Put back this rank's random state from a checkpoint's resume.json (``where``, for the message)."""
    try:
        set_rng_state(rank_state(state, collective)["rng"])
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as err:
        raise CheckpointError(f"{where}: bad resume state ({type(err).__name__}: {err})") from None

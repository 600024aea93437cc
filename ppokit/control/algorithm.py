"""One PPO update of an actor-critic, from a rollout: the algorithm box, minus the loop around it.

    batch  = GAE(γ, λ) over the rollout, flattened to its valid steps        make_batch
    stats  = K epochs of minibatch updates on the surrogate                    ppokit.core.update
    β / ε  = the adaptive controllers, from the KL the update caused          here

Which implementation runs the minibatch step is decided once, here: the reference
(:class:`~ppokit.core.update.AutogradStep`) or, where its allow-list accepts the policy and the
settings, the fast path's NumPy step (:mod:`ppokit.control.fast`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from ppokit.control import fast
from ppokit.control.config import ControlConfig
from ppokit.control.policy.networks import ActorCritic
from ppokit.control.rollout.storage import Rollout
from ppokit.core.advantages import gae, gae_arrays, masked_mean
from ppokit.core.collective import SINGLE, Collective
from ppokit.core.diagnostics import explained_variance
from ppokit.core.kl import AdaptiveClipController, AdaptiveKLController, kl_k3
from ppokit.core.optim import AveragedGradients, Optimizer, make_adamw
from ppokit.core.schedules import make_schedule
from ppokit.core.update import AutogradStep, MinibatchStep, PPOBatch, PPOUpdateSettings, run_epochs
from ppokit.errors import CheckpointError, ConfigError

if TYPE_CHECKING:
    from ppokit.control.fast.layout import LiveViews


@dataclass(kw_only=True)
class ControlBatch(PPOBatch):
    """A rollout's valid steps flattened into rows, one per env step, with what the policy re-runs on."""

    #: The observations the actions were taken on (normalised, as the policy saw them).
    obs: Tensor
    #: The actions taken.
    actions: Tensor
    #: ``[rows, actions]``: which actions were allowed; None when the env gives no masks. (Not
    #: :attr:`~ppokit.core.update.PPOBatch.mask`, which marks the loss entries that count.)
    action_mask: Tensor | None = None
    #: The critic's own observations; None when it sees the actor's.
    critic_obs: Tensor | None = None


@dataclass(kw_only=True)
class SequenceBatch(PPOBatch):
    """A recurrent policy's rollout kept as whole env sequences. The per-step quantities of
    :class:`~ppokit.core.update.PPOBatch` are env-major ``[N, T]`` (a minibatch picks envs) and
    ``mask`` marks the reset steps out of the loss; what the core re-runs on stays time-major."""

    #: ``[T, N, ...]`` observations, ``[T, N, ...]`` actions, ``[T, N]`` episode starts.
    seq_obs: Tensor
    seq_actions: Tensor
    seq_starts: Tensor
    #: ``[N, S]``: the core's state before the rollout's first step.
    initial_state: Tensor
    #: ``[T, N, actions]``: the allowed actions, or None.
    seq_action_mask: Tensor | None = None


def rollout_advantages(rollout: Rollout, gamma: float, gae_lambda: float) -> tuple[Tensor, Tensor]:
    """GAE over a time-major rollout: ``(advantages, returns)``, each ``[T, N]``."""
    if rollout.values.device.type == "cpu" and not rollout.values.requires_grad:  # NumPy views: cheaper small ops
        values, term = rollout.values.numpy(), rollout.terminated.numpy()
        after = np.concatenate([values[1:], rollout.last_value.numpy()[None]])  # as `following` below
        adv, ret = gae_arrays(rollout.rewards.numpy(), values, np.where(term, np.zeros((), after.dtype), after),
                              term | rollout.truncated.numpy(), gamma, gae_lambda)
        return torch.from_numpy(adv), torch.from_numpy(ret)
    following = torch.cat([rollout.values[1:], rollout.last_value.unsqueeze(0)])
    # Termination: the future is worth nothing. Truncation: the following step's input is the
    # true final observation (next-step autoreset), so ``following`` already bootstraps from it.
    next_values = torch.where(rollout.terminated, torch.zeros_like(following), following)
    episode_ends = rollout.terminated | rollout.truncated
    return gae(rollout.rewards, rollout.values, next_values, episode_ends, gamma, gae_lambda)


def make_batch(rollout: Rollout, gamma: float, gae_lambda: float, every_step_valid: bool = False) -> ControlBatch:
    """GAE over the rollout, then the valid steps flattened into one batch. ``every_step_valid``
    (same-step autoreset) skips the selection, whose size would have to be read from the device."""
    advantages, returns = rollout_advantages(rollout, gamma, gae_lambda)
    on_host = rollout.values.device.type == "cpu"
    keep: np.ndarray | Tensor | None
    if every_step_valid:
        keep = None
    elif on_host:
        keep = np.flatnonzero(rollout.valid.numpy().reshape(-1))
    else:
        keep = rollout.valid.reshape(-1).nonzero().squeeze(1)

    def flat(x: Tensor) -> Tensor:
        rows = x.reshape(-1, *x.shape[2:])
        if keep is None:
            return rows
        if isinstance(keep, np.ndarray):
            return torch.from_numpy(rows.numpy().take(keep, axis=0))
        return rows.index_select(0, keep)

    return ControlBatch(
        obs=flat(rollout.obs), actions=flat(rollout.actions), logp=flat(rollout.logp), values=flat(rollout.values),
        advantages=flat(advantages), returns=flat(returns),
        action_mask=None if rollout.masks is None else flat(rollout.masks),
        critic_obs=None if rollout.critic_obs is None else flat(rollout.critic_obs),
    )


def make_sequence_batch(rollout: Rollout, gamma: float, gae_lambda: float) -> SequenceBatch:
    """For a recurrent policy: GAE over the rollout, kept as whole env sequences (:class:`SequenceBatch`)."""
    advantages, returns = rollout_advantages(rollout, gamma, gae_lambda)
    assert rollout.starts is not None and rollout.initial_state is not None
    return SequenceBatch(
        logp=rollout.logp.T, values=rollout.values.T, advantages=advantages.T, returns=returns.T, mask=rollout.valid.T,
        seq_obs=rollout.obs, seq_actions=rollout.actions, seq_starts=rollout.starts,
        initial_state=rollout.initial_state, seq_action_mask=rollout.masks,
    )


def make_optimizer(policy: ActorCritic, config: ControlConfig, device: torch.device, on_device: bool = False) -> Optimizer:
    """Adam. On a CPU, for MLP policies, over one flat buffer (the fast path's FlatAdam: torch's
    per-tensor dispatch costs more than a small network's arithmetic there); elsewhere, with
    ``update_backend='torch'`` and for device-resident rollouts, torch's own."""
    if device.type == "cpu" and policy.spec.encoder == "mlp" and config.update_backend != "torch" and not on_device:
        from ppokit.control.fast.flat_adam import FlatAdam
        from ppokit.control.fast.layout import fused_order

        # Stored actor beside critic, layer by layer: the NumPy paths then run both in one product.
        return FlatAdam(policy.parameters(), lr=config.learning_rate, eps=config.adam_eps, layout=fused_order(policy))
    return make_adamw(policy.parameters(), lr=config.learning_rate, eps=config.adam_eps)


class PPOAlgorithm:
    """The update of a control run: optimiser, schedules, controllers, and the choice of minibatch step."""

    def __init__(self, config: ControlConfig, policy: ActorCritic, device: torch.device,
                 collective: Collective = SINGLE, on_device: bool = False) -> None:
        """``collective``: the processes that each collect a share of the batch (data parallel).
        ``on_device``: the rollouts come from a torch env (:mod:`.device_rollout`): every step is
        valid, the batch stays on the device, and the update is the torch reference (the fast path
        works on host arrays)."""
        c = self.config = config
        if on_device and c.update_backend == "numpy":
            raise ConfigError("config field 'update_backend' = 'numpy' cannot apply: a torch env's rollout stays on "
                              "its device and the NumPy fast path works on the host; use 'auto' or 'torch'")
        self.on_device = on_device
        if c.ent_coef is None:
            raise ValueError("PPOAlgorithm needs a config resolved for its action space (ControlConfig.for_actions)")
        self.ent_coef: float = c.ent_coef
        self.policy, self.device, self.collective = policy, device, collective
        self.optimizer = make_optimizer(policy, config, device, on_device)
        if collective.active:
            self.optimizer = AveragedGradients(self.optimizer, collective)
        self.lr_schedule = make_schedule(c.lr_schedule, c.learning_rate)
        self.clip_schedule = make_schedule(c.clip_schedule, c.clip_range)
        self.kl_controller = (
            AdaptiveKLController(c.kl_coef, c.kl_target) if c.loss == "penalty" and c.adaptive_kl else None
        )
        self.clip_controller = AdaptiveClipController(c.clip_range, c.kl_target) if c.adaptive_clip else None
        # The NumPy minibatch step was selected (the optimiser is then FlatAdam, whose gradient views
        # it writes into); fast_update says whether it still applies.
        self._fast_selected = not on_device and fast.select(c.update_backend, policy.spec, device, self.settings(0.0))
        self._fused_views: LiveViews | None = None

    @property
    def fast_update(self) -> bool:
        """Whether the NumPy minibatch step runs the updates: selected when the algorithm was made, and
        the policy still one it implements. An env whose first action mask comes in ``info`` mid-run
        turns the policy masked, and from then on the updates take the torch path."""
        return self._fast_selected and fast.refusal(self.policy.spec, self.device, self.settings(0.0)) is None

    @property
    def kl_coef(self) -> float:
        return self.kl_controller.beta if self.kl_controller is not None else self.config.kl_coef

    def clip_range(self, fraction: float) -> float:
        if self.clip_controller is not None:
            return self.clip_controller.clip_range
        return self.clip_schedule(fraction)

    def settings(self, fraction: float) -> PPOUpdateSettings:
        c = self.config
        return PPOUpdateSettings(
            num_epochs=c.num_epochs, num_minibatches=c.num_minibatches, clip_range=self.clip_range(fraction),
            vf_coef=c.vf_coef, ent_coef=self.ent_coef, max_grad_norm=c.max_grad_norm if c.max_grad_norm > 0 else None,
            clip_range_vf=c.clip_range_vf, whiten_advantages=c.whiten_advantages, target_kl=c.target_kl,
            loss=c.loss, kl_coef=self.kl_coef, skip_nonfinite=c.on_nonfinite == "skip",
        )

    def _sequence_evaluate(self, batch: SequenceBatch, idx: Tensor | slice) -> tuple[Tensor, Tensor, Tensor]:
        """Re-run the recurrent policy over the sequences of envs ``idx``; results env-major ``[b, T]``."""
        masks = batch.seq_action_mask
        logp, entropy, value = self.policy.evaluate_sequence(
            batch.seq_obs[:, idx], batch.seq_actions[:, idx], batch.initial_state[idx],
            batch.seq_starts[:, idx], None if masks is None else masks[:, idx])
        return logp.T, entropy.T, value.T

    def minibatch_step(self, batch: ControlBatch | SequenceBatch, settings: PPOUpdateSettings) -> MinibatchStep:
        collective = self.collective
        if isinstance(batch, SequenceBatch):
            sequences = batch
            return AutogradStep(batch, lambda idx: self._sequence_evaluate(sequences, idx), settings, collective)
        obs, actions, masks, critic = batch.obs, batch.actions, batch.action_mask, batch.critic_obs
        # Checked again per update: settings change over a run (scheduled ε, adaptive β).
        if self.fast_update and fast.refusal(self.policy.spec, self.device, settings) is None:
            from ppokit.control.fast.layout import LiveViews
            from ppokit.control.fast.update import NumpyMinibatchStep

            if self._fused_views is None or self._fused_views.policy is not self.policy:
                self._fused_views = LiveViews(self.policy)
            return NumpyMinibatchStep(self.policy, obs, actions, batch, settings, collective, self._fused_views)
        return AutogradStep(batch, lambda idx: self.policy.evaluate(
            obs[idx], actions[idx], None if masks is None else masks[idx], None if critic is None else critic[idx]),
            settings, collective)

    def update(self, rollout: Rollout, fraction: float) -> dict[str, Any]:
        """K epochs on the rollout at ``fraction`` of training done; the update's statistics."""
        return self.train(self.batch(rollout), fraction)

    def batch(self, rollout: Rollout) -> ControlBatch | SequenceBatch:
        """GAE over the rollout, as the batch the K epochs run on."""
        c = self.config
        if rollout.starts is not None:  # a recurrent policy
            return make_sequence_batch(rollout, c.gamma, c.gae_lambda)
        return make_batch(rollout, c.gamma, c.gae_lambda, every_step_valid=self.on_device)

    def train(self, batch: ControlBatch | SequenceBatch, fraction: float) -> dict[str, Any]:
        """K epochs on a batch whose advantages are estimated (what :meth:`update` does after GAE; the
        multi-agent front end estimates them over each agent's own steps)."""
        settings = self.begin_train(fraction)
        step = self.minibatch_step(batch, settings)
        # Rows are samples, or for a recurrent policy whole env sequences.
        stats = run_epochs(step, batch.rows, self.optimizer, settings, device=batch.logp.device,
                           collective=self.collective)
        return self.end_train(batch, stats, settings)

    def begin_train(self, fraction: float) -> PPOUpdateSettings:
        """The schedules' learning rate set on the optimiser, and the epochs' settings, at ``fraction``
        of training done. :meth:`train` is ``begin_train``, the K epochs, :meth:`end_train`; a seed
        group with stacked updates runs the epochs of all its seeds in between (``control.seeds``)."""
        self.optimizer.set_learning_rate(self.lr_schedule(fraction))
        return self.settings(fraction)

    def stacks(self, settings: PPOUpdateSettings) -> bool:
        """Whether the epochs under ``settings`` can run in a stacked update of several seeds: the
        NumPy fast path runs them, over a FlatAdam."""
        from ppokit.control.fast.flat_adam import FlatAdam

        return (self.fast_update and isinstance(self.optimizer, FlatAdam)
                and fast.refusal(self.policy.spec, self.device, settings) is None)

    def end_train(self, batch: ControlBatch | SequenceBatch, stats: dict[str, Any],
                  settings: PPOUpdateSettings) -> dict[str, Any]:
        """After the K epochs' ``stats``: the adaptive controllers' step and the update's statistics."""
        lr = self.optimizer.learning_rate
        if self.kl_controller is not None or self.clip_controller is not None:
            with torch.no_grad():
                if isinstance(batch, SequenceBatch):
                    logp_new = self._sequence_evaluate(batch, slice(None))[0]
                else:
                    logp_new, _, _ = self.policy.evaluate(batch.obs, batch.actions, batch.action_mask, batch.critic_obs)
                kl_after = self._batch_mean(kl_k3(logp_new - batch.logp), batch.mask)
            stats["kl_after_update"] = kl_after
            if self.kl_controller is not None:
                self.kl_controller.update(kl_after)
            if self.clip_controller is not None:
                self.clip_controller.update(kl_after)
        assert batch.values is not None and batch.returns is not None  # a control policy always has a critic
        stats["explained_variance"] = self.collective.mean_floats(
            explained_variance(batch.values, batch.returns, batch.mask))[0]
        stats["learning_rate"] = lr
        stats["clip_range"] = settings.clip_range
        stats["kl_coef"] = settings.kl_coef
        return stats

    def _batch_mean(self, x: Tensor, mask: Tensor | None) -> float:
        """The mean of ``x`` over the valid entries of every process's batch."""
        if not self.collective.active:
            return float(masked_mean(x, mask))
        weights = torch.ones_like(x) if mask is None else mask.to(x.dtype)
        total, count = self.collective.sum_floats(float((x * weights).sum()), float(weights.sum()))
        return total / max(count, 1.0)

    def state_dict(self) -> dict[str, Any]:
        """The adaptive controllers' state (the optimiser's is saved on its own)."""
        return {
            "kl_controller": self.kl_controller.state_dict() if self.kl_controller else None,
            "clip_controller": self.clip_controller.state_dict() if self.clip_controller else None,
        }

    def load_state_dict(self, state: dict[str, Any], where: str) -> None:
        try:
            if self.kl_controller is not None and state.get("kl_controller"):
                self.kl_controller.load_state_dict(state["kl_controller"])
            if self.clip_controller is not None and state.get("clip_controller"):
                self.clip_controller.load_state_dict(state["clip_controller"])
        except (KeyError, TypeError, ValueError) as err:
            raise CheckpointError(f"{where}: bad controller state ({err})") from None

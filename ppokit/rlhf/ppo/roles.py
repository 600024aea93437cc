"""The four roles of RLHF PPO as models: the policy, the frozen reference, the critic, and what trains.

- **policy**: the causal LM being tuned, optionally with LoRA adapters (peft);
- **reference**: a frozen copy of the starting policy, or, with LoRA, the same model with its adapters
  switched off (no second copy of the weights);
- **critic**: a separate scalar-head model (initialised from the reward model or the policy), LoRA
  adapters and a head on a frozen copy of one of those (or on the reward model's own weights), or a
  value head on the policy's own trunk; none with a critic-free ``advantage`` (grpo, rloo, reinforce_pp);
- **trainable**: the module whose parameters the optimiser updates and a checkpoint saves.

The memory options act here: ``frozen_dtype`` (the reference's weights dtype), ``offload_frozen``
(the reference waits in CPU memory between its forward passes, :mod:`ppokit.rlhf.models.offload`),
``gradient_checkpointing`` (the trainable models recompute their activations in the backward pass),
``value_model: lora`` and ``share_reward_trunk``.

The reward sources, the fourth kind of model, live in :mod:`ppokit.rlhf.rewards.sources`.
"""

from __future__ import annotations

import contextlib
import copy
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ppokit.errors import ConfigError
from ppokit.io.atomic import atomic_write_dir
from ppokit.rlhf.config import RLHFConfig
from ppokit.rlhf.models.generation import Completions, completion_logits
from ppokit.rlhf.models.loading import (
    PolicyWithValueHead,
    ScalarHeadModel,
    hidden_size_of,
    load_causal_lm,
    load_reward_model,
    load_trunk,
    trunk_of,
)
from ppokit.rlhf.models.logprobs import completion_logits_of
from ppokit.rlhf.models.lora import save_adapter, with_lora
from ppokit.rlhf.models.offload import CPUOffload
from ppokit.rlhf.models.recompute import enable_gradient_checkpointing
from ppokit.rlhf.ppo.advantages import uses_critic
from ppokit.rlhf.rewards.sources import CombinedReward, RewardModelScorer

log = logging.getLogger("ppokit")


class PPOModels:
    """Builds and runs the policy, reference and critic of an RLHF PPO run."""

    def __init__(self, config: RLHFConfig, reward: CombinedReward, dtype: torch.dtype, device: torch.device,
                 frozen_dtype: torch.dtype | None = None) -> None:
        self.config, self.dtype, self.device = config, dtype, device
        #: The weights dtype of the reference (``frozen_dtype``; the reward models get theirs in build_reward).
        self.frozen_dtype = frozen_dtype or dtype
        c = config
        cpu = torch.device("cpu")
        if c.offload_frozen:
            # First, so the reward models leave the device before the policy arrives there. The one
            # whose trunk the critic shares (share_reward_trunk) trains with it and stays.
            scorers = self._scorers(reward)
            for scorer in scorers[1:] if c.share_reward_trunk and uses_critic(c.advantage) else scorers:
                scorer.offload()
        policy = load_causal_lm(c.policy, dtype, device, c.trust_remote_code, c.attn_implementation)
        self.reference: nn.Module | None = None
        #: The reference kept in CPU memory between its forward passes (``offload_frozen``).
        self.reference_offload: CPUOffload | None = None
        if c.lora:
            policy = with_lora(policy, c, "CAUSAL_LM", what="lora: true")
        if c.reference is not None or not c.lora:
            # A frozen copy. Without LoRA it must be a second set of weights; with LoRA and an
            # explicit reference it is the model the user named.
            self.reference = load_causal_lm(c.reference or c.policy, self.frozen_dtype, cpu if c.offload_frozen else device,
                                            c.trust_remote_code, c.attn_implementation)
            self.reference.requires_grad_(False).eval()
            if c.offload_frozen:
                self.reference_offload = CPUOffload(self.reference, device)
        if c.gradient_checkpointing:
            enable_gradient_checkpointing(policy)
        self.policy: Any = policy  # a transformers causal LM, or a peft model around one

        self.critic: ScalarHeadModel | None = None
        self.trainable: nn.Module
        self.with_head: PolicyWithValueHead | None = None
        if not uses_critic(c.advantage):
            # Critic-free advantages (grpo, rloo, reinforce_pp): no critic is built, trained or saved.
            self.trainable = nn.ModuleDict({"policy": policy})
        elif c.value_model == "head":
            self.with_head = PolicyWithValueHead(policy).to(device)
            self.trainable = self.with_head
        else:
            self.critic = self._build_critic(reward).to(device)
            self.trainable = nn.ModuleDict({"policy": policy, "critic": self.critic})
        # Dropout off throughout: the rollout's log-probs and the first epoch's must agree exactly,
        # or the ratio starts away from 1 for no reason.
        self.trainable.eval()
        #: Whether the policy and critic are FSDP-sharded over the processes (:mod:`ppokit.rlhf.models.sharding`).
        self.sharded = False

    @staticmethod
    def _scorers(reward: CombinedReward) -> list[RewardModelScorer]:
        return [s for s in reward.sources if isinstance(s, RewardModelScorer)]

    def _build_critic(self, reward: CombinedReward) -> ScalarHeadModel:
        """The critic of ``value_model`` ``separate`` or ``lora``, initialised as ``value_init`` says."""
        c = self.config
        critic = self._initial_critic(reward)
        if c.value_model == "lora":
            # The trunk is frozen (peft freezes what it wraps); the adapters and the head train.
            critic.trunk = with_lora(critic.trunk, c, None, what="value_model: lora")
            critic.head.to(dtype=self.dtype).requires_grad_(True)
            if c.share_reward_trunk:
                self._scorers(reward)[0].share_trunk(critic.trunk)
        if c.gradient_checkpointing:
            enable_gradient_checkpointing(critic)
        return critic

    def _initial_critic(self, reward: CombinedReward) -> ScalarHeadModel:
        c = self.config
        if c.value_init == "reward":
            scorers = self._scorers(reward)
            if scorers and c.share_reward_trunk:
                # No second copy: the scorer's own model (frozen), with a head of the critic's own.
                shared = scorers[0].model
                if shared.kind == "value_head":
                    head = copy.deepcopy(shared.model.head)
                    return ScalarHeadModel(shared.model.trunk, head.in_features, head)
                return ScalarHeadModel.from_sequence_classifier(shared.model)
            if scorers:
                # A second load: the critic trains while the scorer's copy stays frozen.
                reward_model = load_reward_model(scorers[0].name, self.dtype, self.device, c.trust_remote_code,
                                                 c.attn_implementation)
                if reward_model.kind == "value_head":
                    model: ScalarHeadModel = reward_model.model
                    return model
                return ScalarHeadModel.from_sequence_classifier(reward_model.model)
            if c.share_reward_trunk:
                raise ConfigError("config field 'share_reward_trunk' needs a reward model among the reward sources "
                                  "(a directory in 'rewards') for the critic to share")
            log.info("value_init is 'reward' but no reward model is among the reward sources; "
                     "initialising the critic from the policy")
        trunk = load_trunk(c.policy, self.dtype, c.trust_remote_code, c.attn_implementation)
        return ScalarHeadModel(trunk, hidden_size_of(trunk))

    @contextlib.contextmanager
    def reference_model(self) -> Iterator[nn.Module]:
        """The frozen reference: a separate model (on the device for the block when offloaded), or the
        policy with its LoRA adapter disabled."""
        if self.reference_offload is not None:
            with self.reference_offload.on_device() as reference:
                yield reference
        elif self.reference is not None:
            yield self.reference
        else:
            with self.policy.disable_adapter():
                yield self.policy

    def policy_forward(self, batch: Completions) -> tuple[Tensor, Tensor | None]:
        """Completion logits and (with a value head) values; the head projects only the positions
        that predict completion tokens."""
        ids, mask, pos = batch.input_ids, batch.attention_mask, batch.position_ids
        if self.with_head is not None:
            return self.with_head.completion(ids, mask, pos, batch.prompt_length)
        logits, _ = completion_logits_of(self.policy, ids, mask, pos, batch.prompt_length)
        return logits, None

    def values(self, batch: Completions) -> Tensor:
        """The separate critic's values of the completion tokens."""
        assert self.critic is not None
        values = self.critic(batch.input_ids, batch.attention_mask, batch.position_ids)
        return completion_logits(values, batch.prompt_length)

    def reference_logits(self, batch: Completions) -> Tensor:
        with self.reference_model() as reference:
            logits, _ = completion_logits_of(reference, batch.input_ids, batch.attention_mask, batch.position_ids,
                                             batch.prompt_length)
        return logits

    def save(self, directory: str | Path, tokenizer: Any, state: dict[str, Tensor] | None = None) -> None:
        """Write ``policy/`` (an ordinary ``save_pretrained`` causal LM, LoRA merged in, plus the
        adapter alone in ``policy_adapter/``) and, with a critic, ``value_model/`` (trunk +
        ``scalar_head.safetensors``). ``state``: the trainable weights gathered from a sharded model (``sharding.full_state``), written
        in place of the module's own."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        lora = self.config.lora
        part = (lambda prefix: None) if state is None else (lambda prefix: _part(state, prefix))
        policy_state = part("lm." if self.with_head is not None else "policy.")

        def write_policy(tmp: Path) -> None:
            if lora:
                merged = copy.deepcopy(self.policy).merge_and_unload()
                merged.save_pretrained(tmp)
                del merged
            elif policy_state is not None:
                self.policy.save_pretrained(tmp, state_dict=policy_state)
            else:
                self.policy.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)

        atomic_write_dir(directory / "policy", write_policy)
        if lora:
            atomic_write_dir(directory / "policy_adapter", lambda tmp: save_adapter(self.policy, tmp, tokenizer))
        if self.critic is not None:
            # A LoRA critic is written merged: an ordinary scalar-head model, like a separate critic's.
            critic = self.critic.merged() if self.config.value_model == "lora" else self.critic
            critic_state = part("critic.")
            atomic_write_dir(directory / "value_model", lambda tmp: critic.save(tmp, critic_state))
        elif self.with_head is not None:
            policy = self.policy
            base = policy.get_base_model() if hasattr(policy, "get_base_model") else policy
            head = self.with_head.value_head
            value_state = None
            if state is not None and policy_state is not None:
                trunk_prefix = f"{base.base_model_prefix}."
                value_state = {**{f"trunk.{k}": v for k, v in _part(policy_state, trunk_prefix).items()},
                               **{f"head.{k}": v for k, v in _part(state, "value_head.").items()}}

            def write_value(tmp: Path) -> None:
                ScalarHeadModel(trunk_of(base), head.in_features, head).save(tmp, value_state)
            atomic_write_dir(directory / "value_model", write_value)


def _part(state: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """The entries of ``state`` under ``prefix``, with the prefix taken off."""
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}

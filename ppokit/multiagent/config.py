"""Configuration of a multi-agent PPO run on a PettingZoo environment.

Every PPO field is control's (:class:`~ppokit.control.config.ControlConfig`: the same names, defaults,
rules and documentation); this adds who shares a policy and what the critic sees. Env steps are
counted per env copy (one ``parallel_env.step`` of all its agents is one step), so ``num_envs *
num_steps`` env steps make a rollout, and each agent of a group adds its own rows to that group's batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from ppokit.configuration import Rule, adapt, doc, given_fields, records_given
from ppokit.control.config import RESUMABLE_FIELDS as CONTROL_RESUMABLE
from ppokit.control.config import ControlConfig
from ppokit.errors import ConfigError

#: The same as control's: budget, watching, evaluation and saving.
RESUMABLE_FIELDS = CONTROL_RESUMABLE

Critic = Literal["ippo", "mappo"]


def _policies_rule(value: Any) -> bool:
    if isinstance(value, str):
        return value in ("auto", "shared", "separate")
    return (isinstance(value, dict) and bool(value)
            and all(isinstance(k, str) and isinstance(v, list) and v and all(isinstance(a, str) for a in v)
                    for k, v in value.items()))


@records_given
@dataclass
class MultiAgentConfig(ControlConfig):
    """Every knob of a multi-agent run: control's PPO fields, and who shares a policy with whom and
    what the critic sees."""

    env_id: str = doc("PettingZoo env: a module path with parallel_env()/env() ('mpe2.simple_spread_v3', "
                      "'pettingzoo.classic.connect_four_v3'), or 'module:function' returning a ParallelEnv or AEC "
                      "env (AEC envs are converted with PettingZoo's aec_to_parallel).",
                      default="mpe2.simple_spread_v3", rule=Rule(lambda v: bool(v.strip()), "a non-empty env id"))
    policies: Any = doc("Who shares a policy: 'auto' (one policy when every agent has the same spaces, else one per "
                        "group of agents named alike: 'adversary_0', 'adversary_1' -> 'adversary'), 'shared' (one for "
                        "all; their spaces must be equal), 'separate' (one per agent), or {group: [agent names or "
                        "name prefixes]}.", default="auto",
                        rule=Rule(_policies_rule, "'auto', 'shared', 'separate' or {group: [agent names or prefixes]}"))
    agent_id: bool = doc("Append the agent's one-hot index in its group to what a shared policy (and its critic) "
                         "sees, so agents that share weights can still act differently.", default=False)
    critic: Critic = doc("'mappo' (a centralised critic on the env's global state(), or on every agent's observation "
                         "concatenated when the env has no state) or 'ippo' (each agent's critic sees its own "
                         "observation).", default="mappo")
    bootstrap_truncation: bool = doc("When an agent's episode is truncated (a time limit), bootstrap from its "
                                     "final observation's value; false ends it there as a termination does, as "
                                     "the MAPPO and JaxMARL MPE baselines treat MPE's 25-step limit (with value "
                                     "normalisation, bootstrapping there was measured to collapse MPE training: "
                                     "BENCHMARKS.md).", default=True)
    normalize_value: bool = doc("Train the critic on returns normalised by their running mean and std, and "
                                "de-normalise its outputs for GAE (the value normalisation the MAPPO paper found "
                                "important).", default=True)

    def __post_init__(self) -> None:
        super().__post_init__()
        given = given_fields(self)

        def refuse(name: str, why: str) -> ConfigError:
            return ConfigError(f"config field {name!r} = {getattr(self, name)!r} cannot apply to a multi-agent run: {why}")

        if self.vectorization not in ("auto", "sync"):
            raise refuse("vectorization", "the env copies are PettingZoo envs stepped in this process ('auto' or 'sync')")
        if self.env_preprocessing == "atari":
            raise refuse("env_preprocessing", "the Atari stack wraps Gymnasium envs; give PettingZoo's "
                         "own Atari env with SuperSuit's wrappers applied in a 'module:function' factory")
        if self.env_wrappers:
            raise refuse("env_wrappers", "they are Gymnasium wrappers; apply PettingZoo/SuperSuit wrappers in a "
                         "'module:function' factory")
        if self.env_spec is not None:
            raise refuse("env_spec", "it records a Gymnasium EnvSpec")
        if self.recurrent is not None and self.critic == "mappo":
            if "critic" in given:
                raise refuse("critic", "a recurrent policy shares its core between actor and critic, so the critic "
                             "cannot read a global state of its own; use critic: ippo with recurrent")
            adapt(self, "critic", "ippo", "a recurrent policy's core serves actor and critic, so the critic reads "
                  "each agent's own observation")
        if self.critic == "mappo" and self.shared_trunk:
            if "shared_trunk" in given:
                raise refuse("shared_trunk", "MAPPO's critic reads the global state, so it needs a trunk of its own")
            adapt(self, "shared_trunk", False, "MAPPO's critic reads the global state with a trunk of its own")

"""PettingZoo environments as the multi-agent front end steps them.

PettingZoo has two APIs. A ``ParallelEnv`` is the native form: every live agent acts at each step. An
AEC env whose metadata says ``is_parallelizable`` is converted with PettingZoo's own
``aec_to_parallel``; any other AEC env (a turn-based game: the classic board games) is driven turn
by turn, one agent acting per step, its rewards credited to each agent's last action as PettingZoo's
``last()`` does. :class:`AgentEnv` gives both one face: who acts now and on what, and what a step did.

Which module a saved run's env id imports is decided here too: PettingZoo's and MPE2's own env
modules are the ecosystem's registry and may be imported from a saved file; anything else needs the
user's consent (``--trust``), as control's ``module:Env`` ids do.
"""

from __future__ import annotations

import re
import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from gymnasium import spaces

from ppokit.errors import ConfigError, EnvError, UntrustedCodeError
from ppokit.imports import import_user_module

#: Packages whose env modules a saved run may name and have imported without --trust.
OWN_PACKAGES = ("pettingzoo", "mpe2")


def _module_and_attr(env_id: str) -> tuple[str, str | None]:
    if ":" in env_id:
        module, attr = env_id.split(":", 1)
        return module, attr or None
    return env_id, None


def env_module(env_id: str) -> str:
    """The module making ``env_id`` imports."""
    return _module_and_attr(env_id)[0]


def imports_foreign_code(env_id: str) -> bool:
    """Whether making ``env_id`` imports a module outside PettingZoo's and MPE2's own."""
    top = env_module(env_id).split(".")[0]
    return top not in OWN_PACKAGES


def require_consent(env_id: str, source: str) -> None:
    """Refuse to make ``env_id`` named in ``source`` (a file the user has not vouched for) when that
    would import a module outside PettingZoo's own."""
    if imports_foreign_code(env_id):
        raise UntrustedCodeError(
            f"{source} names the env {env_id!r}: making it would import module {env_module(env_id)!r}. ppokit imports "
            f"nothing a saved file names unless you allow it: if you trust this file, pass --env {env_id} or --trust "
            "(in Python: trust=True)")


def resolve_factory(env_id: str) -> Callable[..., Any]:
    """What makes one env of ``env_id``: a module's ``parallel_env`` (else ``env``), or the named callable."""
    module_name, attr = _module_and_attr(env_id)
    try:
        target: Any = import_user_module(module_name)
    except ImportError as err:
        hint = " (pip install mpe2)" if module_name.split(".")[0] == "mpe2" else ""
        if module_name.startswith("pettingzoo.mpe"):
            hint = " (PettingZoo's MPE moved to the mpe2 package: pip install mpe2, then 'mpe2.<env>')"
        raise ConfigError(f"config field 'env_id' = {env_id!r}: cannot import {module_name!r} ({err}){hint}") from None
    if attr is not None:
        try:
            target = getattr(target, attr)
        except AttributeError:
            try:  # 'mpe2:simple_spread_v3': an env module inside the package
                target = import_user_module(f"{module_name}.{attr}")
            except ImportError:
                raise ConfigError(f"config field 'env_id' = {env_id!r}: module {module_name!r} has no {attr!r}") from None
    if isinstance(target, types.ModuleType):
        for name in ("parallel_env", "env"):
            if callable(getattr(target, name, None)):
                return getattr(target, name)  # type: ignore[no-any-return, unused-ignore]
        raise ConfigError(f"config field 'env_id' = {env_id!r}: module {target.__name__!r} has neither parallel_env() "
                          "nor env(); name a PettingZoo env module or a 'module:function' that makes one")
    if not callable(target):
        raise ConfigError(f"config field 'env_id' = {env_id!r}: {attr!r} is not callable")
    return target  # type: ignore[no-any-return, unused-ignore]


def is_parallel(env: Any) -> bool:
    from pettingzoo.utils.env import ParallelEnv

    return isinstance(env, ParallelEnv)


def is_aec(env: Any) -> bool:
    from pettingzoo.utils.env import AECEnv

    return isinstance(env, AECEnv)


def make_env(env_id: str, env_kwargs: Mapping[str, Any], factory: Callable[..., Any] | None = None) -> Any:
    """One PettingZoo env (parallel, or AEC) of ``env_id`` made with ``env_kwargs``."""
    factory = factory or resolve_factory(env_id)
    try:
        env = factory(**dict(env_kwargs))
    except TypeError as err:
        raise ConfigError(f"config field 'env_kwargs' = {dict(env_kwargs)!r} does not fit {env_id!r}: {err}") from None
    if not (is_parallel(env) or is_aec(env)):
        raise EnvError(f"{env_id!r} made a {type(env).__name__}, which is neither a PettingZoo ParallelEnv nor an AEC "
                       "env; a Gymnasium env trains with ppokit.PPO (ppokit train)")
    return env


def as_agent_env(env: Any) -> AgentEnv:
    """The one face of a PettingZoo env: parallel as it is, a parallelizable AEC env through PettingZoo's
    own conversion, any other AEC env turn by turn."""
    if is_parallel(env):
        return ParallelAgents(env)
    if getattr(env, "metadata", {}).get("is_parallelizable", False):
        from pettingzoo.utils.conversions import aec_to_parallel

        return ParallelAgents(aec_to_parallel(env))
    return TurnBasedAgents(env)


def agents_of(env: Any) -> list[str]:
    agents = list(getattr(env, "possible_agents", []) or [])
    if not agents:
        raise EnvError(f"{type(env).__name__} declares no possible_agents; PettingZoo envs list every agent that may "
                       "appear in possible_agents")
    return [str(a) for a in agents]


# ---------------------------------------------------------------------------------------------- groups

def _prefix(agent: str) -> str:
    return re.sub(r"[_\-]?\d+$", "", agent) or agent


@dataclass
class Group:
    """Agents that share one policy (and its critic, optimiser and normalisers)."""

    name: str
    agents: list[str]
    observation_space: spaces.Space
    action_space: spaces.Space


def _same(a: spaces.Space, b: spaces.Space) -> bool:
    return bool(a == b)


def make_groups(policies: Any, possible: list[str], obs_space: Callable[[str], spaces.Space],
                act_space: Callable[[str], spaces.Space]) -> list[Group]:
    """The groups ``policies`` asks for over the agents ``possible``, their spaces checked equal."""
    if policies == "separate":
        assigned = {a: [a] for a in possible}
    elif policies == "shared":
        assigned = {"shared": list(possible)}
    elif policies == "auto":
        first = possible[0]
        if all(_same(obs_space(a), obs_space(first)) and _same(act_space(a), act_space(first)) for a in possible):
            assigned = {"shared": list(possible)}
        else:
            assigned = {}
            for a in possible:
                assigned.setdefault(_prefix(a), []).append(a)
            if any(not all(_same(obs_space(a), obs_space(m[0])) and _same(act_space(a), act_space(m[0])) for a in m)
                   for m in assigned.values()):
                assigned = {a: [a] for a in possible}
    else:
        assigned = {}
        claimed: dict[str, str] = {}
        for group, names in policies.items():
            members = [a for a in possible if any(a == n or _prefix(a) == n or a.startswith(n) for n in names)]
            if not members:
                raise ConfigError(f"config field 'policies': group {group!r} ({names}) matches none of the env's agents "
                                  f"{possible}")
            for a in members:
                if a in claimed:
                    raise ConfigError(f"config field 'policies': agent {a!r} is in both group {claimed[a]!r} and "
                                      f"{group!r}")
                claimed[a] = group
            assigned[group] = members
        left = [a for a in possible if a not in claimed]
        if left:
            raise ConfigError(f"config field 'policies': agent {left[0]!r} is in no group (every agent needs a policy)")
    groups = []
    for name, members in assigned.items():
        head = members[0]
        for a in members[1:]:
            for what, space_of in (("observation", obs_space), ("action", act_space)):
                if not _same(space_of(a), space_of(head)):
                    raise EnvError(f"agent {a!r}'s {what} space {space_of(a)} differs from agent {head!r}'s "
                                   f"{space_of(head)} in the shared group {name!r}; agents that share a policy need the "
                                   "same spaces (policies: separate, or a group per kind of agent)")
        groups.append(Group(name, members, obs_space(head), act_space(head)))
    return groups


# ---------------------------------------------------------------------------------------------- stepping

@dataclass
class StepResult:
    """What one step of one env copy did."""

    #: Reward for each agent that has acted in this episode, to add to its last action's row.
    rewards: dict[str, float] = field(default_factory=dict)
    #: Agents whose life ended with this step: ``(terminated, final observation or None)``.
    ended: dict[str, tuple[bool, Any]] = field(default_factory=dict)
    #: Whether the episode is over (no agent left): the copy is reset before the next step.
    over: bool = False


class AgentEnv:
    """One env copy: who acts now (:attr:`acting`, with their observations and infos), every live agent's
    observation (:attr:`live`, for the bootstrap at a rollout's end), one step, the global state."""

    env: Any
    acting: dict[str, Any]
    infos: dict[str, Any]

    @property
    def live(self) -> dict[str, Any]:
        raise NotImplementedError

    def reset(self, seed: int | None = None) -> None:
        raise NotImplementedError

    def step(self, actions: dict[str, Any]) -> StepResult:
        raise NotImplementedError

    def state(self) -> np.ndarray | None:
        """The env's global ``state()``, or None when it has none."""
        try:
            return np.asarray(self.env.state(), dtype=np.float32).reshape(-1)
        except (NotImplementedError, AttributeError, TypeError):
            return None  # TypeError: an env whose 'state' attribute is data (rps_v2), not the method

    def close(self) -> None:
        self.env.close()


def _check_observed(env: Any, agents: list[str], obs: Mapping[str, Any], when: str) -> None:
    for a in agents:
        if a not in obs:
            raise EnvError(f"{type(env).__name__}: agent {a!r} is live after {when} but returned no observation "
                           "(a ParallelEnv returns one for every agent in env.agents)")


class ParallelAgents(AgentEnv):
    def __init__(self, env: Any) -> None:
        self.env = env
        self.acting, self.infos = {}, {}

    @property
    def live(self) -> dict[str, Any]:
        return self.acting

    def reset(self, seed: int | None = None) -> None:
        obs, infos = self.env.reset(seed=seed)
        agents = list(self.env.agents)
        _check_observed(self.env, agents, obs, "reset")
        self.acting = {a: obs[a] for a in agents}
        self.infos = {a: (infos or {}).get(a, {}) for a in agents}

    def step(self, actions: dict[str, Any]) -> StepResult:
        obs, rewards, terms, truncs, infos = self.env.step(actions)
        now = list(self.env.agents)
        result = StepResult()
        for a in actions:  # rewards of agents that did not act (a dead agent's) are not theirs to learn from
            result.rewards[a] = float(rewards.get(a, 0.0))
            term, trunc = bool(terms.get(a, False)), bool(truncs.get(a, False))
            if term or trunc or a not in now:
                result.ended[a] = (term, None if term else obs.get(a))
        _check_observed(self.env, now, obs, "a step")
        self.acting = {a: obs[a] for a in now}
        self.infos = {a: (infos or {}).get(a, {}) for a in now}
        result.over = not now
        return result


class TurnBasedAgents(AgentEnv):
    """An AEC env that is not parallelizable: one agent acts per step (``agent_selection``). Rewards an
    agent gets on others' turns go to its own last action, as ``last()``'s cumulative reward does."""

    def __init__(self, env: Any) -> None:
        self.env = env
        self.acting, self.infos = {}, {}
        #: The agents that have acted in this episode and whose life goes on (a dict: plain data to save).
        self._acted: dict[str, bool] = {}

    @property
    def live(self) -> dict[str, Any]:
        return {a: self.env.observe(a) for a in self.env.agents}

    def _settle(self, result: StepResult | None) -> None:
        """Step the finished agents out (PettingZoo's None action), then note who acts next."""
        env = self.env
        while env.agents:
            agent = env.agent_selection
            if not (env.terminations.get(agent, False) or env.truncations.get(agent, False)):
                break
            if result is not None and agent in self._acted and agent not in result.ended:
                result.ended[agent] = (bool(env.terminations[agent]),
                                       None if env.terminations[agent] else env.observe(agent))
            env.step(None)
            self._collect(result)
        if env.agents:
            agent = env.agent_selection
            self.acting = {agent: env.observe(agent)}
            self.infos = {agent: env.infos.get(agent, {})}
        else:
            self.acting, self.infos = {}, {}

    def _collect(self, result: StepResult | None) -> None:
        if result is None:
            return
        for a, r in self.env.rewards.items():
            if a in self._acted:
                result.rewards[a] = result.rewards.get(a, 0.0) + float(r)

    def reset(self, seed: int | None = None) -> None:
        self.env.reset(seed=seed)
        self._acted = {}
        self._settle(None)

    def step(self, actions: dict[str, Any]) -> StepResult:
        env = self.env
        result = StepResult()
        (agent, action), = actions.items()
        self._acted[agent] = True
        env.step(action)
        self._collect(result)
        # An agent that finished on another's turn is stepped out when its turn comes (in _settle),
        # but its life ended now: say so while its last action is the one to credit.
        for a in list(self._acted):
            if a not in result.ended and (env.terminations.get(a, False) or env.truncations.get(a, False)):
                result.ended[a] = (bool(env.terminations[a]), None if env.terminations[a] else env.observe(a))
        self._settle(result)
        for a in result.ended:
            self._acted.pop(a, None)
        result.over = not env.agents
        return result


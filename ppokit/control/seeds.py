"""Several seeds of one config trained together in one process (``ppokit train ENV --seeds 1-8``).

A :class:`SeedGroup` holds one :class:`~ppokit.control.agent.PPO` per seed and runs their updates
in lockstep, inside the one loop shell (:func:`ppokit.io.loop.run_loop`)::

    for each update:
        for t in 1..T:   one batched forward pass acts for every seed      (fast.stacked)
                         each seed's envs step, its collector keeps books   (RolloutCollector.advance)
        for each seed:   its update, with its own global generators        (PPO.update)

Each seed writes an ordinary run directory, ``ROOT/seed_<k>`` (config.yaml, metrics, checkpoints,
model, eval.json): ``ppokit resume``, ``plot``, ``eval`` and ``package`` work on it as on a run of
its own, and ``ppokit plot ROOT/seed_*`` draws the seeds as one band. ``ROOT/seeds.json`` lists
them, so ``ppokit resume ROOT`` continues the whole group.

**Seed k of a group is the run ``--seed k`` alone, bit for bit.** Each seed keeps its own envs, its
own sampling generator and its own copy of the process-wide generators (Python's, NumPy's, torch's:
swapped in around everything of that seed that draws from them: its update's minibatch order, its
checkpoints). The batched forward pass computes each seed's slice with the same products as one
policy alone (:mod:`ppokit.control.fast.stacked`). The update runs seed by seed: the seeds'
batches differ in size (a rollout's reset steps are dropped), so stacked products would no longer
be the ones a seed computes alone (BENCHMARKS.md, "ppokit vs PureJaxRL", has what that costs). The environments step seed by
seed too: each seed's envs must draw from that seed's generators. Policies the fast path does not
run (CNN, recurrent, action masks, ``update_backend: torch``) act seed by seed as well: still one
process and exact, without the batched forward pass.

**Stacked updates** (``stack_updates=True``, ``--stack-updates``) trade that exactness for speed:
the K epochs of every seed run as one computation (:mod:`ppokit.control.fast.stacked_epochs`), each
seed with its own shuffles, Adam state, clipping and early stop, its minibatches padded and masked to
the longest; a seed's losses and gradients are its solo run's up to float rounding, and the group is
deterministic and resumes exactly (``seeds.json`` records the mode).
"""

from __future__ import annotations

import json
import logging
import random
import re
import shutil
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from ppokit.configuration import adapted_notes, replace
from ppokit.control import fast
from ppokit.control.agent import PPO, check_budget
from ppokit.control.algorithm import ControlBatch
from ppokit.control.config import ControlConfig
from ppokit.control.fast.stacked import StackedPolicy
from ppokit.control.rollout.host import RolloutCollector
from ppokit.errors import CheckpointError, ConfigError
from ppokit.io.atomic import atomic_write_json
from ppokit.io.checkpoints import checkpoint_path
from ppokit.io.lock import LOCK_FILE, RunLock
from ppokit.io.loop import Callback, LoopPlan, run_loop
from ppokit.io.metrics import MetricsLogger
from ppokit.io.run_dir import default_run_dir, holds_run
from ppokit.io.run_info import GROUP_FILE

#: The most seeds one ``--seeds`` may name (a typo like ``1-10000`` should not start 10,000 runs).
MAX_SEEDS = 256

log = logging.getLogger("ppokit")


def parse_seeds(text: str) -> list[int]:
    """``'1-8'``, ``'1,3,5'`` or ``'0-3,10'`` as a list of distinct seeds, in order."""
    seeds: list[int] = []
    for part in text.split(","):
        match = re.fullmatch(r"\s*(-?\d+)\s*(?:-\s*(-?\d+)\s*)?", part)
        if match is None:
            raise ConfigError(f"--seeds {text!r}: expected seeds like 1-8, 1,3,5 or 0-3,10 (a range is FIRST-LAST)")
        first = int(match.group(1))
        last = first if match.group(2) is None else int(match.group(2))
        if last < first:
            raise ConfigError(f"--seeds {text!r}: the range {part.strip()!r} ends before it starts")
        if last - first + 1 + len(seeds) > MAX_SEEDS:
            raise ConfigError(f"--seeds {text!r}: more than {MAX_SEEDS} seeds in one process")
        seeds.extend(range(first, last + 1))
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds {text!r} names a seed twice")
    return seeds


class Generators:
    """One seed's copy of the process-wide generators (Python's, NumPy's global, torch's CPU one)."""

    def __init__(self) -> None:
        self.capture()

    def capture(self) -> None:
        self.state = (random.getstate(), np.random.get_state(), torch.get_rng_state())

    @contextmanager
    def active(self) -> Iterator[None]:
        """Run the block with these generators, and keep what it drew."""
        python, numpy_state, torch_state = self.state
        random.setstate(python)
        np.random.set_state(numpy_state)
        torch.set_rng_state(torch_state)
        try:
            yield
        finally:
            self.capture()


class _GroupMetrics(MetricsLogger):
    """The loop shell's metrics logger for a group: each seed's row goes to that seed's own logger."""

    def __init__(self, loggers: Sequence[MetricsLogger]) -> None:  # opens nothing itself
        self.loggers = list(loggers)

    def log(self, record: Any, step: int, prefix: str = "train") -> None:
        for index, row in record["rows"].items():
            self.loggers[index].log(row, int(row["global_step"]), prefix)

    def close(self, status: Any = "finished") -> None:
        for logger in self.loggers:
            logger.close(status)


class SeedGroup:
    """Trains one config under several seeds in one process; see the module docstring.

    >>> group = SeedGroup(ControlConfig(env_id="CartPole-v1", total_steps=50_000), seeds=range(1, 9))  # doctest: +SKIP
    >>> group.learn(run_dir="runs/cartpole-seeds")                                                     # doctest: +SKIP
    """

    def __init__(self, config: ControlConfig | None, seeds: Sequence[int], *,
                 build: Callable[[int], PPO] | None = None, stack_updates: bool = False,
                 group_seeds: Sequence[int] | None = None) -> None:
        """``build(seed)``: how to make a seed's agent (default: ``PPO`` of ``config`` with that seed;
        ``config`` may then be None: the first agent's is the group's). ``stack_updates``: run every
        seed's minibatch steps as one batched computation (faster; a seed is then no longer its solo
        run bit for bit, see :mod:`ppokit.control.fast.stacked_update`); a policy or setting the
        NumPy fast path does not run is refused here, in one line. ``group_seeds``: the whole group
        when this process trains only ``seeds``, a share of it (``--jobs``, :mod:`ppokit.control.seed_jobs`):
        ``seeds.json`` lists them all, and the other shares' run directories are the group's."""
        self.stack_updates = bool(stack_updates)
        self.seeds = [int(s) for s in seeds]
        if not self.seeds:
            raise ConfigError("a seed group needs at least one seed")
        if len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f"seeds {self.seeds} name a seed twice")
        self.group_seeds = self.seeds if group_seeds is None else [int(s) for s in group_seeds]
        if not set(self.seeds) <= set(self.group_seeds):
            raise ConfigError(f"seeds {self.seeds} are not all in the group's {self.group_seeds}")
        self.generators: list[Generators] = []
        self.agents: list[PPO] = []
        for note in adapted_notes(config) if config is not None else []:
            log.info("adapted %s", note)  # once for the group: each seed's copy of the config is already fitted
        for seed in self.seeds:
            # Built one after another: each seeds the process-wide generators and draws its initial
            # weights from them (a resumed one restores them), as a run alone would; what is left
            # of them is that seed's.
            if build is not None:
                agent = build(seed)
            elif config is not None:
                agent = PPO(replace(config, seed=seed, run_dir=None))
            else:
                raise ValueError("SeedGroup needs a config or a build function")
            if agent.collective.active:
                raise ConfigError("--seeds trains in one process; it cannot be combined with --nproc or torchrun")
            self.agents.append(agent)
            self.generators.append(Generators())
        self.config = config if config is not None else self.agents[0].config
        if self.stack_updates:
            for agent in self.agents:
                why = stacking_refusal(agent)
                if why is not None:
                    self.close()
                    raise ConfigError(f"--stack-updates cannot apply: {why}; leave it out (the seeds then update "
                                      "one after another, each exactly its solo run)")
        self.run_dir: Path | None = None
        self.num_updates = 0
        #: Seeds that stopped (stop_at_return, or a callback): they sit out the remaining updates.
        self.stopped: set[int] = set()

    @classmethod
    def resume(cls, run_dir: str | Path, *, trust: bool = False, share: Sequence[int] | None = None,
               **overrides: Any) -> SeedGroup:
        """The group in ``run_dir`` (its seeds.json) as of each seed's latest checkpoint, ready for
        :meth:`learn` to continue; ``overrides`` and ``trust`` as for :meth:`PPO.resume`. ``share``:
        only these of its seeds (one job's, ``--jobs``)."""
        root = Path(run_dir)
        seeds = read_group(root)
        if seeds is None:
            raise ConfigError(f"{root}: not a seed group (no {GROUP_FILE})")
        group = cls(None, seeds if share is None else share,
                    build=lambda seed: PPO.resume(root / f"seed_{seed}", trust=trust, **overrides),
                    stack_updates=group_stacks_updates(root), group_seeds=seeds)
        group.run_dir = root
        return group

    # ------------------------------------------------------------------ the loop shell's interface
    def update(self) -> dict[str, Any]:
        """One update of every seed still training: a lockstep rollout, then each seed's update."""
        active = [i for i in range(len(self.agents)) if i not in self.stopped]
        self._collect_together([self.agents[i] for i in active])
        rows = {}
        if self.stack_updates:
            rows = self._update_stacked(active)
        else:
            for i in active:
                with self.generators[i].active():
                    rows[i] = self.agents[i].update()
        self.num_updates += 1
        return {"rows": rows, "global_step": sum(a.global_step for a in self.agents)}

    def _update_stacked(self, active: Sequence[int]) -> dict[int, dict[str, Any]]:
        """Each active seed's update, the K epochs of all of them as one stacked computation
        (:func:`ppokit.control.fast.stacked_epochs.stacked_update`). Each seed's minibatches are
        those of its own shuffle, drawn as its solo update draws them (``torch.randperm`` from its
        generators, once per epoch it enters): a seed that stops early is given back the generator
        state after its last epoch's draw, as alone."""
        from ppokit.control.fast.flat_adam import FlatAdam
        from ppokit.control.fast.stacked_epochs import stacked_update

        begun = []
        for i in active:
            agent = self.agents[i]
            with self.generators[i].active():
                batch, fraction = agent.begin_update()
                settings = agent.algorithm.begin_train(fraction)
                if not agent.algorithm.stacks(settings) or not isinstance(batch, ControlBatch):
                    raise ConfigError(f"seed {self.seeds[i]}: its update settings left the NumPy fast path, "
                                      "which --stack-updates needs")
                splits, states = [], []
                for _ in range(settings.num_epochs):
                    perm = torch.randperm(batch.rows, device=batch.logp.device)
                    splits.append([part.numpy() for part in perm.tensor_split(settings.num_minibatches)])
                    states.append(torch.get_rng_state())
            begun.append((batch, settings, splits, states))
        # algorithm.stacks() checked that each optimiser is a FlatAdam
        optimizers = [cast(FlatAdam, self.agents[i].algorithm.optimizer) for i in active]
        results = stacked_update(
            self.agents[active[0]].policy, optimizers,
            [(batch.obs, batch.actions, batch) for batch, _, _, _ in begun], [b[1] for b in begun],
            [b[2] for b in begun], [f"seed {self.seeds[i]}" for i in active])
        rows = {}
        for i, (batch, settings, _, states), stats in zip(active, begun, results):
            agent = self.agents[i]
            with self.generators[i].active():
                drawn = int(stats["epochs"] + stats["early_stopped"])
                if 0 < drawn < len(states):
                    torch.set_rng_state(states[drawn - 1])
                rows[i] = agent.end_update(agent.algorithm.end_train(batch, stats, settings))
        return rows

    def after_update(self, record: dict[str, Any]) -> bool:
        """Each seed's evaluation and stop; the group stops when every seed has."""
        for i, row in record["rows"].items():
            with self.generators[i].active():
                if self.agents[i].after_update(row):
                    self.stopped.add(i)
        return len(self.stopped) == len(self.agents)

    def checkpoint_path(self) -> Path:
        assert self.run_dir is not None
        return checkpoint_path(self.run_dir, self.num_updates)

    def save_checkpoint(self) -> Path:
        """A checkpoint of every seed, each in its own run directory (resumable alone too)."""
        paths = []
        for agent, generators in zip(self.agents, self.generators):
            with generators.active():  # the checkpoint records this seed's generators
                paths.append(agent.save_checkpoint())
        return paths[0]

    # ------------------------------------------------------------------ training
    def member_dir(self, seed: int) -> Path:
        assert self.run_dir is not None
        return self.run_dir / f"seed_{seed}"

    def learn(self, total_steps: int | None = None, *, run_dir: str | Path | None = None, overwrite: bool = False,
              resume: bool = False, callback: Callback | None = None) -> SeedGroup:
        """Train every seed to ``total_steps`` env steps (default: the config's), writing
        ``run_dir/seed_<k>`` for each and ``run_dir/seeds.json``. ``resume=True`` continues each
        seed from its latest checkpoint. ``callback`` gets each seed's metrics row (with ``seed``);
        returning False stops that seed."""
        c = self.config
        if run_dir is None and c.run_dir is None and self.run_dir is None and resume:
            raise ConfigError("resume=True needs the group's directory (run_dir)")
        self.run_dir = Path(run_dir or self.run_dir or c.run_dir or default_group_dir(c.env_id, self.seeds))
        if resume and read_group(self.run_dir) is not None and group_stacks_updates(self.run_dir) != self.stack_updates:
            flag = "without" if self.stack_updates else "with"
            raise ConfigError(f"{self.run_dir} holds a group trained {flag} --stack-updates; continue it as it was "
                              f"trained (`ppokit resume {self.run_dir}`), or start another --run-dir")
        if resume:
            for agent, seed, generators in zip(self.agents, self.seeds, self.generators):
                if agent.resume_from is None:
                    overwrite = agent.restore_latest(self.member_dir(seed)) or overwrite
                generators.capture()  # a restored seed continues from its checkpoint's generators
        starting = all(agent.resume_from is None for agent in self.agents)
        stale = self._stale_members(overwrite) if starting else []
        stale_locks = lock_members(stale)  # before anything changes: one in use refuses the start
        loggers = []
        resumed = self.agents[0].total_steps if self.agents[0].resume_from is not None else None
        total = int(total_steps) if total_steps is not None else resumed or c.total_steps
        for agent, seed in zip(self.agents, self.seeds):
            if agent.resume_from is not None:  # before any seed's files change
                check_budget(total, agent.global_step, self.member_dir(seed))
        try:
            for agent, seed in zip(self.agents, self.seeds):
                loggers.append(agent.open_run(self.member_dir(seed), total, overwrite))
        except BaseException:
            for lock in stale_locks:
                lock.release()
            raise
        # Every new seed's run has started (its directory locked, its config written): only now do the
        # old group's other seeds go, so a refused or failed start leaves the old group whole.
        for member, lock in zip(stale, stale_locks):
            remove_member(member, lock)
        group: dict[str, Any] = {"kind": "ppokit.seeds", "env_id": c.env_id, "seeds": self.group_seeds,
                                 "runs": [f"seed_{s}" for s in self.group_seeds]}
        if self.stack_updates:  # read back by resume: a stacked group continues stacked
            group["stack_updates"] = True
        atomic_write_json(self.run_dir / GROUP_FILE, group)
        batch = c.batch_size
        remaining = [max(0, (total - a.global_step) // batch) for a in self.agents]
        self.num_updates = min(a.num_updates for a in self.agents)
        self.stopped = {i for i, n in enumerate(remaining) if n == 0}
        plan = LoopPlan(
            updates=max(remaining), desc=f"{c.env_id} × {len(self.seeds)} seeds", checkpoint_every=c.checkpoint_every,
            checkpoint_minutes=c.checkpoint_minutes, x_axis=lambda record: int(record["global_step"]),
            progress=c.progress, unit="step", total=sum(a.global_step + n * batch for a, n in zip(self.agents, remaining)),
            position=lambda: sum(a.global_step for a in self.agents),
            postfix=lambda r: {"ret": _mean_return(r)},
        )
        metrics = _GroupMetrics(loggers)
        with metrics:
            run_loop(self, plan, metrics, None if callback is None else self._per_seed(callback))
            for agent, generators, logger in zip(self.agents, self.generators, loggers):
                agent.resume_from = None
                with generators.active():
                    agent.finish_run(logger)
        return self

    def _stale_members(self, overwrite: bool) -> list[Path]:
        """The run directories of the seeds a group already in ``run_dir`` has and this one has not:
        refused without ``overwrite`` (the group would mix two seed sets), else to be removed."""
        assert self.run_dir is not None
        old = read_group(self.run_dir) or []
        members = [self.run_dir / name for name in sorted(p.name for p in self.run_dir.glob("seed_*"))
                   if _seed_of(name) is not None and _seed_of(name) not in self.group_seeds]
        stale = [m for m in members if _seed_of(m.name) in old or holds_run(m)]
        if stale and not overwrite:
            raise CheckpointError(
                f"{self.run_dir} holds the seed group {old or [_seed_of(m.name) for m in stale]}; continue it with "
                f"`ppokit resume {self.run_dir}`, choose another --run-dir, or pass --overwrite to replace it by "
                f"seeds {self.group_seeds}")
        return [m for m in stale if holds_run(m)]

    def close(self) -> None:
        for agent in self.agents:
            agent.close()

    def _per_seed(self, callback: Callback) -> Callback:
        def each(record: dict[str, Any]) -> bool:
            for i, row in record["rows"].items():
                if callback({**row, "seed": self.seeds[i]}) is False:
                    self.stopped.add(i)
            return len(self.stopped) < len(self.agents)
        return each

    def _collect_together(self, agents: Sequence[PPO]) -> None:
        """Collect every agent's next rollout in lockstep, acting for all of them in one batched
        forward pass, and hand each its rollout (``collector.prepared``). Policies the fast path
        does not run are left to collect their own."""
        collectors = [a.collector for a in agents]
        policies = [c.numpy_policy for c in collectors
                    if isinstance(c, RolloutCollector) and c.policy.core is None and c.numpy_policy is not None]
        if len(agents) < 2 or len(policies) < len(agents):
            return
        together = [c for c in collectors if isinstance(c, RolloutCollector)]
        with torch.inference_mode():
            for c in together:
                c.begin()
            stacked = StackedPolicy([p for p in policies if p is not None])
            rngs = [c.rng for c in together]
            for t in range(self.config.num_steps):
                actions, logp, values = stacked.act(np.stack([c.current_obs for c in together]), rngs)
                for k, c in enumerate(together):
                    c.advance(t, actions[k], logp[k], values[k])
            for c in together:
                c.prepared = c.finish()


def _mean_return(record: dict[str, Any]) -> str:
    returns = [row["episodic_return"] for row in record["rows"].values() if row.get("episodic_return") is not None]
    return f"{np.mean(returns):.1f}" if returns else "-"


def default_group_dir(env_id: str, seeds: Sequence[int], root: str | Path = "runs") -> Path:
    """``runs/<env>__seeds<first>-<last>__<time>`` (numbered when it exists)."""
    contiguous = list(seeds) == list(range(seeds[0], seeds[-1] + 1))
    return default_run_dir(env_id, seeds[0], root, label=f"seeds{seeds[0]}{'-' if contiguous else '+'}{seeds[-1]}")


def _seed_of(name: str) -> int | None:
    """k of a ``seed_<k>`` directory name, else None."""
    digits = name[len("seed_"):]
    return int(digits) if name.startswith("seed_") and digits.isdigit() else None


def lock_members(paths: Sequence[Path]) -> list[RunLock]:
    """The locks of old seeds' run directories, all or none (one in use by a run refuses the lot)."""
    locks: list[RunLock] = []
    try:
        for path in paths:
            locks.append(RunLock(path))
    except BaseException:
        for lock in locks:
            lock.release()
        raise
    return locks


def remove_member(path: Path, lock: RunLock) -> None:
    """Remove an old seed's run directory, whose ``lock`` this process holds."""
    for child in path.iterdir():
        if child.name == LOCK_FILE:
            continue
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()
    lock.release()
    shutil.rmtree(path, ignore_errors=True)


def stacking_refusal(agent: PPO) -> str | None:
    """Why ``agent``'s updates cannot be stacked with other seeds' (``--stack-updates``); None when they
    can: the stacked update is the NumPy fast path's, for what that path runs."""
    c = agent.config
    if c.update_backend == "torch":
        return "update_backend is 'torch', and stacked updates are the NumPy fast path's"
    if agent.torch_env:
        return "a torch env's rollout stays on its device, and stacked updates work on host arrays"
    settings = agent.algorithm.settings(0.0)
    why = fast.refusal(agent.policy.spec, agent.device, settings)
    if why is not None:
        return why.replace("the NumPy fast path", "stacked updates (the NumPy fast path)")
    if not agent.algorithm.stacks(settings):
        return "the NumPy fast path does not run this policy's update"
    return None


def group_stacks_updates(run_dir: str | Path) -> bool:
    """Whether the group in ``run_dir`` was trained with ``--stack-updates`` (its seeds.json says so)."""
    path = Path(run_dir) / GROUP_FILE
    try:
        return json.loads(path.read_text(encoding="utf-8")).get("stack_updates", False) is True
    except (OSError, ValueError, AttributeError, RecursionError):
        return False


def read_group(run_dir: str | Path) -> list[int] | None:
    """The seeds of the group in ``run_dir`` (its seeds.json), or None when it is not a group."""
    path = Path(run_dir) / GROUP_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        seeds = [int(s) for s in data["seeds"]]
    except (OSError, ValueError, KeyError, TypeError, RecursionError) as err:
        raise ConfigError(f"{path}: not a seed group's file ({err})") from None
    return seeds

"""The study of ``ppokit tune``: Optuna trials that each train a PPO run, in one or more processes.

A trial samples values from the space (:mod:`ppokit.control.tune.space`) on top of the base config, trains
them in its own run directory ``OUT/trial_NNNN`` and is worth the mean return of its final
deterministic evaluation. Every ``eval_every`` env steps it is evaluated and the return reported to
Optuna at that step, so the pruner can stop it there.

Every trial trains with the base seed: trials then differ only in their hyperparameters (the same
start states, the same evaluation episodes), which makes the comparisons of a small study less
noisy, and ``best.yaml`` (:mod:`ppokit.control.tune.sweep`) reproduces the best trial exactly. Check the
winner on other seeds before trusting it.

With ``jobs`` > 1 the trials run in worker processes (:mod:`ppokit.control.tune.workers`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ppokit.configuration import doc, from_mapping, to_dict
from ppokit.control.config import ControlConfig
from ppokit.control.tune.space import Space
from ppokit.errors import ConfigError, PPOKitError, TrainingError

log = logging.getLogger("ppokit")

#: Trial states that count towards the number of trials asked for; failed ones are run again.
COUNTED = ("COMPLETE", "PRUNED")
#: Intermediate evaluations per trial when ``eval_every`` is not given.
DEFAULT_EVALUATIONS = 5
#: Evaluations run their episodes in parallel in up to this many envs.
MAX_EVAL_ENVS = 32
#: Fields a resumed study may change: they only change how a trial is watched or where it runs.
WATCH_ONLY = frozenset({"run_dir", "progress", "tensorboard", "device", "torch_threads", "checkpoint_every",
                        "checkpoint_minutes", "keep_checkpoints"})


@dataclass
class TuneSettings:
    """How a study runs (the base config and the search space are given beside it)."""

    trials: int = doc("Trials the study should hold, finished or pruned; a resumed study runs only the missing ones.", default=20)
    study: str | None = doc("Study name; null: ppokit-<env id>.", default=None)
    storage: str | None = doc("Optuna storage URL (sqlite:///study.db, postgresql://...); null: in memory, or OUT/study.db when jobs > 1.", default=None)
    jobs: int = doc("Worker processes, each running trials against the shared storage.", default=1)
    out: str | None = doc("Where the trial runs, best.yaml and trials.jsonl go; null: runs/tune-<study>.", default=None)
    eval_every: int | None = doc("Env steps between a trial's evaluations for the pruner; null: a fifth of total_steps; 0: none.", default=None)
    eval_episodes: int = doc("Episodes of each evaluation, the intermediate ones and the final one (the trial's value).", default=10)
    pruner: Any = doc("'median' (median of the trials so far at the same step, after 5 trials and from the second evaluation), 'none', or an optuna.pruners object.", default="median")

    def resolved(self, base: ControlConfig) -> TuneSettings:
        """These settings checked, with the defaults that depend on the base config filled in."""
        for name, low in (("trials", 1), ("jobs", 1), ("eval_episodes", 1)):
            if getattr(self, name) < low:
                raise ConfigError(f"--{name.replace('_', '-')} {getattr(self, name)}: must be at least {low}")
        if self.eval_every is not None and self.eval_every < 0:
            raise ConfigError(f"--eval-every {self.eval_every}: must not be negative")
        if isinstance(self.pruner, str) and self.pruner not in ("median", "none"):
            raise ConfigError(f"pruner {self.pruner!r}: expected 'median' or 'none'")
        study = self.study or f"ppokit-{base.env_id.replace(':', '-').replace('/', '-')}"
        out = Path(self.out or Path("runs") / f"tune-{study}").resolve()
        storage = self.storage
        if storage is None and self.jobs > 1:
            storage = f"sqlite:///{out / 'study.db'}"  # processes share no memory: they need a file
        every = max(1, base.total_steps // DEFAULT_EVALUATIONS) if self.eval_every is None else self.eval_every
        return dataclasses.replace(self, study=study, out=str(out), storage=storage, eval_every=every)


@dataclass(frozen=True)
class Job:
    """What a worker process needs to run trials: plain data, so it pickles."""

    base: dict[str, Any]
    space: Space
    settings: TuneSettings
    log_level: int = logging.INFO


def require_optuna() -> Any:
    """Optuna, quietened (:func:`announce` says one line per trial), or a ConfigError saying how to get it."""
    try:
        import optuna
    except ImportError:
        raise ConfigError("ppokit tune needs Optuna: pip install 'ppokit[tune]'") from None
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    return optuna


def make_storage(url: str | None) -> Any:
    """The Optuna storage for ``url`` (None: in memory); a URL it cannot open is a ConfigError."""
    if url is None:
        return None
    from optuna.storages import RDBStorage

    # Jobs write to one SQLite file at once: wait for its lock rather than fail at the first clash.
    engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else None
    try:
        return RDBStorage(url, engine_kwargs=engine)
    except Exception as err:  # SQLAlchemy's and the drivers' errors have no common base
        raise ConfigError(f"--storage {url}: cannot open it ({type(err).__name__}: {err})") from None


def make_pruner(settings: TuneSettings) -> Any:
    optuna = require_optuna()
    if not isinstance(settings.pruner, str):
        return settings.pruner
    if settings.pruner == "none" or not settings.eval_every:
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=2 * settings.eval_every)


def make_sampler(seed: int, worker: int, existing: int) -> Any:
    """A TPE sampler seeded per worker and per resume, so workers and runs never repeat each other's
    first (random) suggestions."""
    import numpy as np

    optuna = require_optuna()
    return optuna.samplers.TPESampler(seed=int(np.random.SeedSequence([seed, worker, existing]).generate_state(1)[0]))


def counted(study: Any) -> int:
    return sum(t.state.name in COUNTED for t in study.get_trials(deepcopy=False))


def trial_config(job: Job, values: dict[str, Any], number: int) -> ControlConfig:
    """The config trial ``number`` trains: the base, the sampled values, and what a trial is run with."""
    s = job.settings
    data = {**job.base, **values, "run_dir": str(Path(str(s.out)) / f"trial_{number:04d}"), "progress": False,
            "tensorboard": False, "eval_episodes": s.eval_episodes, "eval_deterministic": True}
    if s.jobs > 1:
        data["torch_threads"] = 1  # one core per job: more threads only fight over the cores
    return from_mapping(ControlConfig, data, f"trial {number}")


class Evaluations:
    """The ``learn`` callback of a trial: evaluate when training passes a multiple of ``every`` env
    steps and report the return at that multiple, so trials with different batch sizes are compared
    at the same steps; raise ``TrialPruned`` (ending ``learn`` at once) when the pruner says so."""

    def __init__(self, agent: Any, trial: Any, every: int, episodes: int) -> None:
        self.agent, self.trial, self.every, self.episodes = agent, trial, every, episodes
        self.last = agent.config.steps_trained()  # the final evaluation stands for the last one
        self.reported = 0  # the last multiple of ``every`` reported
        self.env: Any = None

    def __call__(self, record: dict[str, Any]) -> None:
        step = int(record["global_step"])
        if not self.every or step < self.every or step >= self.last:
            return
        point = step // self.every * self.every
        if point <= self.reported:  # no new multiple passed since the last evaluation
            return
        self.reported = point
        if self.env is None:
            self.env = self.agent.env_source.evaluation(min(self.episodes, MAX_EVAL_ENVS))
        # The same episodes for every trial at the same point (the seed depends on the point only).
        result = self.agent.evaluate(self.episodes, deterministic=True, env=self.env,
                                     seed=self.agent.config.seed + 20_000 + point // self.every)
        value = result["mean_return"]
        if value is None or not math.isfinite(value):
            return
        self.trial.report(value, step=point)
        if self.trial.should_prune():
            import optuna

            raise optuna.TrialPruned(f"at step {point} with a mean return of {value:.2f}")

    def close(self) -> None:
        if self.env is not None:
            self.env.close()


def objective(trial: Any, job: Job) -> float:
    """Train one trial's config; its value is the mean return of the final deterministic evaluation."""
    from ppokit.control.agent import PPO
    from ppokit.control.tune.space import sample

    trial.set_user_attr("pid", os.getpid())
    trial.set_user_attr("host", socket.gethostname())  # with the pid: whether its process still runs
    try:
        values = sample(job.space, trial, job.base)
        trial.set_user_attr("values", values)
        config = trial_config(job, values, trial.number)
        trial.set_user_attr("run_dir", config.run_dir)
        agent = PPO(config)
    except PPOKitError as err:
        trial.set_user_attr("error", str(err))
        raise
    evaluations = Evaluations(agent, trial, int(job.settings.eval_every or 0), job.settings.eval_episodes)
    try:
        agent.learn(overwrite=True, callback=evaluations)  # a rerun in memory starts its trials over
    except PPOKitError as err:
        trial.set_user_attr("error", str(err))
        raise
    finally:
        evaluations.close()
        agent.close()
    value = json.loads((Path(str(config.run_dir)) / "eval.json").read_text())["mean_return"]
    if value is None or not math.isfinite(value):
        trial.set_user_attr("error", "the final evaluation's mean return is not finite")
        return math.nan  # Optuna marks the trial failed
    return float(value)


def announce(study: Any, trial: Any) -> None:
    """One line per finished trial (Optuna's own logging is off)."""
    state = trial.state.name
    if state == "COMPLETE":
        values = ", ".join(f"{k}={short(v)}" for k, v in trial.user_attrs.get("values", trial.params).items())
        log.info("trial %d: mean return %.2f (%s)", trial.number, trial.value, values)
    elif state == "PRUNED":
        steps = trial.intermediate_values
        last = max(steps) if steps else None
        log.info("trial %d: pruned%s", trial.number,
                 f" at step {last} (mean return {steps[last]:.2f})" if last is not None else "")
    else:
        log.warning("trial %d: %s: %s", trial.number, state.lower(), trial.user_attrs.get("error", "see above"))


def short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def run_trials(study: Any, job: Job, n_trials: int) -> None:
    """``n_trials`` trials of ``study`` in this process. A sampled config that cannot train (an invalid
    combination, a loss that turns NaN) fails its trial and the study goes on; anything else stops it."""
    study.optimize(lambda trial: objective(trial, job), n_trials=n_trials, catch=(ConfigError, TrainingError),
                   callbacks=[announce])


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # someone else's process now holds the pid
        return True
    return False


def fail_abandoned(settings: TuneSettings, pids: set[int] | None = None) -> list[int]:
    """Mark failed the RUNNING trials of the study whose process stopped without ending them (killed,
    or its parent was): those of ``pids``, or (None) every one started on this machine by a process
    that is gone. A trial of a live process, or of another machine, is left alone. The trial
    numbers marked. A failed trial does not count, so the next run of the study runs it again."""
    if settings.storage is None or pids == set():
        return []
    optuna = require_optuna()
    study = optuna.load_study(study_name=settings.study, storage=make_storage(settings.storage))
    marked = []
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        pid, host = trial.user_attrs.get("pid"), trial.user_attrs.get("host")
        if not isinstance(pid, int) or host != socket.gethostname():
            continue
        if (pids is not None and pid in pids) or (pids is None and _gone(pid)):
            study._storage.set_trial_user_attr(trial._trial_id, "error",
                                               f"its process (pid {pid}) stopped before the trial ended")
            study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
            marked.append(trial.number)
    if marked:
        log.warning("study %r: trial%s %s marked failed: %s process stopped before %s ended (a rerun runs %s again)",
                    settings.study, "s" * (len(marked) > 1), ", ".join(map(str, marked)),
                    "their" if len(marked) > 1 else "its", "they" if len(marked) > 1 else "it",
                    "them" if len(marked) > 1 else "it")
    return marked


def check_resumable(study: Any, base: ControlConfig, space: Space, settings: TuneSettings) -> None:
    """Refuse to add trials to a study whose trials trained other settings (their values could not be
    compared) or sampled a field differently (Optuna cannot mix them); remember them in a new one."""
    from optuna.distributions import check_distribution_compatibility

    now = json.loads(json.dumps({"base": to_dict(base), "eval_every": settings.eval_every,
                                 "eval_episodes": settings.eval_episodes}))
    saved = study.user_attrs.get("ppokit")
    if saved is None:
        study.set_user_attr("ppokit", now)
        return
    where = f"study {settings.study!r} ({settings.storage})"
    # A field the space sets is the space's, whatever the base says.
    changed = [k for k in now["base"]
               if k not in WATCH_ONLY and k not in space and saved["base"].get(k) != now["base"][k]]
    changed = [f"{k} = {saved['base'].get(k)!r} (now {now['base'][k]!r})" for k in changed]
    changed += [f"{k} = {saved[k]!r} (now {now[k]!r})" for k in ("eval_every", "eval_episodes") if saved[k] != now[k]]
    if changed:
        raise ConfigError(f"{where}: its trials ran with {'; '.join(changed[:4])}; trials of other settings cannot "
                          "be compared: run it with the settings it began with, or name a new --study")
    for trial in study.get_trials(deepcopy=False):
        for name, old in trial.distributions.items():
            if name in space and space[name].distribution() is not None:
                try:
                    check_distribution_compatibility(old, space[name].distribution())
                except ValueError as err:
                    raise ConfigError(f"{where}: field {name!r}: its trials sampled it from {old}, the space now "
                                      f"says {space[name].describe()} ({err}); keep the space the study began "
                                      "with, or name a new --study") from None

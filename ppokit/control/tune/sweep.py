"""``tune()``: run or resume a study, then write what it found.

``OUT/trials.jsonl`` holds one row per trial (state, value, values, intermediate returns, run
directory, error); ``OUT/best.yaml`` is the best trial as a preset-style file that
``ppokit train --config OUT/best.yaml`` trains again: the fields that differ from what that command
starts from (ppokit's defaults and the env's preset) plus every field the study chose, under a
comment that says which trial it is.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from ppokit.configuration import from_mapping, to_dict
from ppokit.control.config import ControlConfig
from ppokit.control.tune.space import NOT_SEARCHED, default_space, load_space, searched
from ppokit.control.tune.study import (
    Job,
    TuneSettings,
    check_resumable,
    counted,
    fail_abandoned,
    make_pruner,
    make_sampler,
    make_storage,
    require_optuna,
    run_trials,
    short,
)
from ppokit.control.tune.workers import run_workers
from ppokit.errors import ConfigError

log = logging.getLogger("ppokit")

#: Fields best.yaml leaves out: where a run goes is the user's choice, not the study's.
NOT_WRITTEN = frozenset({"run_dir"})


@dataclass
class TuneResult:
    """What :func:`tune` did and wrote."""

    study: Any  # the optuna.Study, as its storage holds it after the run
    settings: TuneSettings  # resolved: study name, out, storage and eval_every filled in
    ran: int  # trials this call ran
    trials_file: Path
    best_file: Path | None  # None when no trial has completed yet


def tune(base: ControlConfig, space: str | Path | Mapping[str, Any] | None = None,
         settings: TuneSettings | None = None) -> TuneResult:
    """Run the trials that study ``settings.study`` lacks, over ``space`` (a YAML file or mapping of
    entries over the default space, see :mod:`ppokit.control.tune.space`) on top of ``base``; then write
    ``trials.jsonl`` and ``best.yaml`` into ``settings.out``."""
    optuna = require_optuna()
    from ppokit.io.atomic import reported_os_errors

    given = settings or TuneSettings()
    settings = given.resolved(base)
    chosen = user_chosen(base)
    params = load_space(space, base, discrete=_discrete_actions(base), chosen=chosen)
    left_out = sorted(chosen & set(default_space(base, discrete=True)) - set(params))
    if left_out:
        log.info("the default search space leaves out what the base config sets (--set, --config, a preset): %s; "
                 "give a field an entry in --space to search it anyway", ", ".join(left_out))
    if not searched(params) and settings.trials > 1:
        raise ConfigError(f"the search space has nothing to search (every entry is fixed or has one choice): the "
                          f"{settings.trials} trials would all train the same config; give an entry a range or several "
                          "choices (--space), or run --trials 1")
    out = Path(str(settings.out))
    with reported_os_errors(out):
        out.mkdir(parents=True, exist_ok=True)
    if given.storage is None and settings.storage is not None:
        log.info("the %d jobs share the study through %s (--storage URL to choose another)", settings.jobs,
                 out / "study.db")
    storage = make_storage(settings.storage)
    study = optuna.create_study(study_name=settings.study, storage=storage, direction="maximize",
                                load_if_exists=True, pruner=make_pruner(settings))
    fail_abandoned(settings)  # trials a killed run left RUNNING would otherwise stay so for ever
    existing = len(study.get_trials(deepcopy=False))
    study.sampler = make_sampler(base.seed, 0, existing)
    check_resumable(study, base, params, settings)
    missing = max(0, settings.trials - counted(study))
    job = Job(to_dict(base), params, settings, logging.getLogger("ppokit").getEffectiveLevel())
    if missing:
        log.info("study %r: running %d of %d trials%s", settings.study, missing, settings.trials,
                 f" in {min(settings.jobs, missing)} processes" if settings.jobs > 1 and missing > 1 else "")
        if settings.jobs > 1 and missing > 1:
            run_workers(job, missing, existing)
            study = optuna.load_study(study_name=settings.study, storage=make_storage(settings.storage))
        else:
            run_trials(study, job, missing)
    else:
        log.info("study %r already holds %d trials; nothing to run", settings.study, settings.trials)
    trials_file, best_file = write_results(study, base, settings)
    return TuneResult(study, settings, missing, trials_file, best_file)


def user_chosen(base: ControlConfig) -> frozenset[str]:
    """The fields the base config sets to other values than ``ppokit train`` would start from (the
    defaults and the env's preset): the user chose them (``--set``, ``--config``, a preset)."""
    baseline = train_baseline(base.env_id)
    return frozenset(f.name for f in fields(ControlConfig)
                     if f.name not in NOT_SEARCHED and getattr(base, f.name) != getattr(baseline, f.name))


def _discrete_actions(base: ControlConfig) -> bool:
    """Whether the env's actions are all discrete (the default space then searches the entropy bonus);
    making the env here also fails fast, before any trial, when it cannot be made. The env is made as
    a trial makes it: a torch env class as one env on the config's device, an id with the config's
    preprocessing."""
    from ppokit.control.envs import torch_source
    from ppokit.control.policy.actions import all_discrete

    source = torch_source.for_config(base)
    if isinstance(source, torch_source.TorchEnvSource):
        vector = source.make(1)
        try:
            return all_discrete(vector.single_action_space)
        finally:
            vector.close()
    env = source.single()
    try:
        return all_discrete(env.action_space)
    finally:
        env.close()


def completed(study: Any) -> list[Any]:
    """The study's complete trials, best first."""
    done = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    return sorted(done, key=lambda t: (-t.value, t.number))


def write_results(study: Any, base: ControlConfig, settings: TuneSettings) -> tuple[Path, Path | None]:
    """Write ``trials.jsonl`` and, once a trial has completed, ``best.yaml``; their paths."""
    from ppokit.io.atomic import atomic_write_text, strict_json

    out = Path(str(settings.out))
    rows = [strict_json(trial_row(t)) + "\n" for t in study.get_trials(deepcopy=False)]
    atomic_write_text(out / "trials.jsonl", "".join(rows))
    best = completed(study)
    if not best:
        return out / "trials.jsonl", None
    atomic_write_text(out / "best.yaml", best_yaml(study, best[0], base, settings))
    return out / "trials.jsonl", out / "best.yaml"


def trial_row(trial: Any) -> dict[str, Any]:
    return {
        "number": trial.number, "state": trial.state.name, "value": trial.value,
        "values": trial.user_attrs.get("values", {}), "params": trial.params,
        "intermediate": {str(step): v for step, v in sorted(trial.intermediate_values.items())},
        "run_dir": trial.user_attrs.get("run_dir"), "error": trial.user_attrs.get("error"),
        "seconds": trial.duration.total_seconds() if trial.duration is not None else None,
    }


def train_baseline(env_id: str) -> ControlConfig:
    """What ``ppokit train --config FILE`` starts from for ``env_id``: the defaults and the env's preset."""
    from ppokit.control.presets import default_preset_for, load_preset

    preset = default_preset_for(env_id)
    return from_mapping(ControlConfig, {**(load_preset(preset) if preset else {}), "env_id": env_id})


def best_yaml(study: Any, best: Any, base: ControlConfig, settings: TuneSettings) -> str:
    """The best trial as a preset-style YAML file: what it is in comments (``ppokit train --config``
    takes config fields only, so no ``description:``), then ``env_id``, ``total_steps``, ``seed``, the
    base fields that differ from :func:`train_baseline`, and the study's choices."""
    baseline = train_baseline(base.env_id)
    data: dict[str, Any] = {"env_id": base.env_id, "total_steps": base.total_steps, "seed": base.seed}
    for f in fields(ControlConfig):
        if f.name not in data and f.name not in NOT_WRITTEN and getattr(base, f.name) != getattr(baseline, f.name):
            data[f.name] = getattr(base, f.name)
    data.update(best.user_attrs.get("values", best.params))
    header = (f"# ppokit tune: trial {best.number} of study {settings.study}, mean return {best.value:.2f} over "
              f"{settings.eval_episodes} deterministic episodes after {base.steps_trained()} steps (seed {base.seed})\n"
              "# train it again with: ppokit train --config <this file>\n")
    return header + yaml.safe_dump(data, sort_keys=False, default_flow_style=None, width=1000)


def summary(result: TuneResult, top: int = 5) -> list[str]:
    """A short table of the best trials, and where the results are."""
    trials = result.study.get_trials(deepcopy=False)
    states = {s: sum(t.state.name == s for t in trials) for s in ("COMPLETE", "PRUNED", "FAIL")}
    lines = [f"study {result.settings.study!r}: {states['COMPLETE']} complete, {states['PRUNED']} pruned, "
             f"{states['FAIL']} failed ({result.ran} run now)"]
    best = completed(result.study)[:top]
    if best:
        lines.append(f"  {'trial':>5}  {'return':>8}  values")
        for t in best:
            values = t.user_attrs.get("values", t.params)
            lines.append(f"  {t.number:>5}  {t.value:>8.2f}  " + ", ".join(f"{k}={short(v)}" for k, v in values.items()))
    lines.append(f"trials: {result.trials_file}")
    if result.best_file is not None:
        lines.append(f"best config: {result.best_file} (train it with: ppokit train --config {result.best_file})")
    return lines


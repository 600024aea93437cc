"""``ppokit package RUN_DIR OUT_DIR``: a trained model as a directory laid out for a model hub.

A control run gives the saved policy's own files (``model.safetensors`` and ``state.json``, so
``PPO.load(OUT_DIR)`` works), ``config.yaml``, ``eval.json`` and ``curves.png``; a language-model
run (RLHF PPO, SFT, reward model) gives its ``save_pretrained`` directory and ``ppokit_config.yaml``.
Each gets a model card, ``README.md`` (:mod:`ppokit.hub.model_card`). Pushing is huggingface_hub's job:
``hf upload <user>/<repo> OUT_DIR``.

Only the run's YAML and JSON are read and its weight files copied: nothing the files name (a
``module:Env`` env id, a ``module:function`` reward) is imported or called, and no env is made.
OUT_DIR is built in a temporary sibling and renamed into place (:func:`ppokit.io.atomic.atomic_write_dir`),
so a failure leaves no half-written OUT_DIR, and an existing one is replaced only once the new one
is complete.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ppokit.configuration import load_yaml
from ppokit.errors import CheckpointError, ConfigError
from ppokit.hub.model_card import ControlFacts, LMFacts, control_card, hub_id, lm_card
from ppokit.io.atomic import atomic_write_dir, recover_dir
from ppokit.io.checkpoints import BEST, CHECKPOINTS, PREFIX, latest_checkpoint
from ppokit.io.outputs import check_output
from ppokit.io.run_info import metrics_rows, read_config, read_json
from ppokit.urls import redact_text

log = logging.getLogger("ppokit")

DEFAULT_LICENSE = "mit"
CARD = "README.md"
PICTURE = "curves.png"
#: The directories of a run that ppokit reads back; OUT_DIR must not be inside one.
SAVED_DIRS = ("model", BEST, CHECKPOINTS, "policy", "policy_adapter", "value_model")
#: The final model of each kind of run, relative to the run directory, and inside a checkpoint.
FINAL = {"control": "model", "rlhf ppo": "policy", "sft": "model", "reward": "model"}
IN_CHECKPOINT = {"control": ".", "rlhf ppo": "policy"}
#: Hub license ids are lower-case words joined by '-', '.' or '+' (``mit``, ``apache-2.0``, ``other``).
_LICENSE = re.compile(r"[a-z0-9][a-z0-9.+-]*")
#: Offset of the evaluation seed from the run's seed (control.agent.PPO.evaluate's default).
EVAL_SEED_OFFSET = 10_000
#: Envs of ppokit's own evaluations: at most this many when the agent makes them (ppokit eval,
#: the end-of-run evaluation); the periodic ones spread their episodes wider.
EVAL_ENVS = 8


@dataclass(frozen=True)
class Source:
    """What is packaged: the run, its config and kind, and the directory of weights taken."""

    run_dir: Path
    kind: str  # run_info.run_kind: 'control', 'rlhf ppo', 'sft' or 'reward'
    config: dict[str, Any]
    model_dir: Path
    which: str  # 'final', 'best' or 'checkpoint'


def package_run(run_dir: str | Path, out_dir: str | Path, *, overwrite: bool = False,
                license: str = DEFAULT_LICENSE, best: bool = False, checkpoint: bool = False) -> Path:
    """Write ``out_dir``: the run's model, its config and a model card (README.md); returns its path.

    ``best``: a control run's best periodic evaluation (``RUN_DIR/best``) instead of its final
    policy. ``checkpoint``: the latest checkpoint's weights, for a run stopped before its end (a run
    without a final model is refused, naming that checkpoint). ``overwrite`` replaces a non-empty
    ``out_dir``, once the new one is complete. Raises :class:`~ppokit.errors.PPOKitError` subclasses
    naming the path for a directory that is no run, a run with nothing saved, or an unusable ``out_dir``.
    """
    if not _LICENSE.fullmatch(license):
        raise ConfigError(f"--license {license!r}: not a hub license id (lower case, e.g. mit, apache-2.0, "
                          "cc-by-4.0, other)")
    if best and checkpoint:
        raise ConfigError("--best and --checkpoint name different weights; give one of them")
    run = Path(run_dir)
    if not run.is_dir():
        raise CheckpointError(f"{run}: no such run directory")
    if (run / "config.yaml").is_file():
        load_yaml(run / "config.yaml")  # a damaged file is one line naming it (and the line YAML stopped at)
    config, kind = read_config(run)
    source = find_source(run, kind, config, best=best, checkpoint=checkpoint)
    out = Path(os.path.abspath(out_dir))
    check_out_dir(out, source, overwrite=overwrite)
    _check_model_dir(source)
    fill = (_control_files if kind == "control" else _lm_files)(source, out.name, license)
    atomic_write_dir(out, fill)
    return out


def find_source(run_dir: Path, kind: str, config: dict[str, Any], *, best: bool = False,
                checkpoint: bool = False) -> Source:
    """The weights to package, or an error that says why there are none and what to do."""
    if best:
        if kind != "control":
            raise ConfigError(f"--best: only control runs keep a best policy; {run_dir} is a {kind} run")
        best_dir = recover_dir(run_dir / BEST)
        if not _holds_model(best_dir, kind):
            raise CheckpointError(f"{best_dir}: no best policy saved (a run keeps one only when it evaluates "
                                  "during training, eval_every > 0); package the final policy without --best")
        return Source(run_dir, kind, config, best_dir, "best")
    latest = latest_checkpoint(run_dir)
    if checkpoint:
        if kind not in IN_CHECKPOINT:
            raise ConfigError(f"--checkpoint: a {kind} run's checkpoints hold training state, not a packageable "
                              f"model ({run_dir}); finish the run with `ppokit resume {run_dir}` and package it")
        if latest is None:
            raise CheckpointError(f"{run_dir / CHECKPOINTS}: no complete checkpoint to package")
        return Source(run_dir, kind, config, Path(os.path.normpath(latest / IN_CHECKPOINT[kind])), "checkpoint")
    final = recover_dir(run_dir / FINAL[kind])
    if _holds_model(final, kind):
        _warn_if_run_went_on(run_dir, kind, final, latest)
        return Source(run_dir, kind, config, final, "final")
    if kind not in IN_CHECKPOINT:
        raise CheckpointError(f"{run_dir}: no saved model ({final} is written when training ends); finish the "
                              f"run with `ppokit resume {run_dir}`, or train the stage again")
    if latest is not None:
        raise CheckpointError(f"{run_dir}: no final model ({final} is written when training ends; the run stopped "
                              f"before). Finish it with `ppokit resume {run_dir}`, or package its latest checkpoint "
                              f"({CHECKPOINTS}/{latest.name}) with --checkpoint")
    raise CheckpointError(f"{run_dir}: nothing saved yet ({final} is written when training ends, and the run has "
                          "no checkpoint); train it again")


def _holds_model(directory: Path, kind: str) -> bool:
    if kind == "control":
        return (directory / "state.json").is_file() and (directory / "model.safetensors").is_file()
    return (directory / "config.json").is_file()


def _update_of(checkpoint: Path) -> int:
    return int(checkpoint.name[len(PREFIX):])


def _warn_if_run_went_on(run_dir: Path, kind: str, final: Path, latest: Path | None) -> None:
    """A run resumed for more steps and stopped again keeps its older final model: say so."""
    if latest is None:
        return
    saved = read_json(final / "state.json" if kind == "control" else run_dir / "summary.json") or {}
    done = saved.get("num_updates" if kind == "control" else "updates")
    if isinstance(done, int) and _update_of(latest) > done:
        log.warning("%s is from update %d, and the run went on to a checkpoint at update %d without finishing; "
                    "--checkpoint packages that one", final, done, _update_of(latest))


def check_out_dir(out: Path, source: Source, *, overwrite: bool) -> None:
    """Refuse an OUT_DIR that would replace the run or write into what ppokit reads back, one that is
    no directory, or one that holds files (without ``overwrite``): :func:`ppokit.io.outputs.check_output`
    and, for this run, its own directories whatever their names."""
    target, run = out.resolve(), source.run_dir.resolve()
    if target == run or run.is_relative_to(target):
        raise ConfigError(f"OUT_DIR {out}: is the run directory {source.run_dir} or holds it; packaging there "
                          "would replace the run; choose another OUT_DIR")
    for inside in (source.model_dir.resolve(), *(run / name for name in SAVED_DIRS)):
        if target.is_relative_to(inside):
            raise ConfigError(f"OUT_DIR {out}: is inside {inside}, which ppokit reads back; choose an OUT_DIR "
                              "outside it")
    check_output(out, kind="dir", overwrite=overwrite, flag="OUT_DIR")


def _check_model_dir(source: Source) -> None:
    """The weights taken must be a real directory of the run: a link (``RUN/policy -> elsewhere``)
    could hand over whatever it points to, and a package is meant to be published."""
    run = source.run_dir.resolve()
    here = source.model_dir
    rel = Path(os.path.relpath(os.path.abspath(here), os.path.abspath(source.run_dir)))
    step = source.run_dir
    for part in rel.parts:
        step = step / part
        if step.is_symlink():
            raise CheckpointError(f"{step}: is a symbolic link; refusing to package what it points to")
    if not here.resolve().is_relative_to(run):
        raise CheckpointError(f"{here}: is not inside the run directory {source.run_dir}; refusing to package it")


def _copy(src: Path, dst: Path) -> None:
    # A link could point anywhere on this machine, and what is packaged is meant to be published.
    if src.is_symlink():
        raise CheckpointError(f"{src}: is a symbolic link; refusing to package what it points to")
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)


def _copy_config(src: Path, dst: Path) -> None:
    """The run's config.yaml as a package publishes it: every URL in it with its credentials hidden
    (a reward server's ``?token=``; the run's own copy keeps them, since resume needs them)."""
    _copy(src, dst)
    text = dst.read_text(encoding="utf-8")
    hidden = redact_text(text)
    if hidden != text:
        dst.write_text(hidden, encoding="utf-8")


def _draw(source: Source, out: Path) -> str | None:
    """Draw the run's curves into ``out``; None, or why there is no picture (also said on stderr)."""
    if source.kind not in ("control", "rlhf ppo"):
        return f"`ppokit plot` draws PPO runs only, and this is {'an SFT' if source.kind == 'sft' else 'a reward-model'} run"
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        log.warning("no %s in the package: matplotlib is not installed (pip install 'ppokit[plot]')", PICTURE)
        return "matplotlib was not installed where the directory was packaged"
    from ppokit.analysis.plots import plot_runs

    try:
        plot_runs([source.run_dir], out)
    except ConfigError as err:  # a run with no metrics rows: nothing to draw, still a model to share
        log.warning("no %s in the package: %s", PICTURE, err)
        return str(err)
    return None


# ---------------------------------------------------------------------------------------------- control

def _control_files(source: Source, out_name: str, license: str) -> Callable[[Path], None]:
    from ppokit.control.checkpointing import MODEL_FILE, STATE_FILE, read_state

    state = read_state(source.model_dir)  # checked before anything is written: a foreign or newer format fails here
    check_weights(source)
    evaluation, eval_file, note = _control_evaluation(source, state)
    seed, seed_note = _eval_seed(source, state, evaluation)

    def fill(tmp: Path) -> None:
        for name in (MODEL_FILE, STATE_FILE):
            _copy(source.model_dir / name, tmp / name)
        _copy_config(source.run_dir / "config.yaml", tmp / "config.yaml")
        if eval_file is not None:
            _copy(eval_file, tmp / "eval.json")
        facts = ControlFacts(source.config, state, source.which, evaluation, note, seed, seed_note,
                             _replayable(source, evaluation), _draw(source, tmp / PICTURE), out_name, license)
        (tmp / CARD).write_text(control_card(facts), encoding="utf-8")

    return fill


def _control_evaluation(source: Source, state: dict[str, Any]) -> tuple[dict[str, Any] | None, Path | None, str]:
    """The evaluation of exactly the packaged policy (its eval.json), with a sentence on which it is."""
    if source.which == "checkpoint":
        return None, None, "A checkpoint is not evaluated when it is saved, so this card has no evaluation."
    file = source.model_dir / "eval.json" if source.which == "best" else source.run_dir / "eval.json"
    result = read_json(file)
    if result is None:
        return None, None, ("The run has no evaluation (no eval.json: it was trained with eval_episodes = 0, or "
                            "stopped before its end-of-run evaluation).")
    if result.get("global_step") != state.get("global_step"):
        return None, None, (f"The run's eval.json is of the policy at env step {result.get('global_step')}, not of "
                            f"this one (step {state.get('global_step')}), so it is left out.")
    which = "the evaluation that chose it as the best" if source.which == "best" else "the run's final evaluation"
    return result, file, f"This is {which} (eval.json)."


def _eval_seed(source: Source, state: dict[str, Any], result: dict[str, Any] | None) -> tuple[int | None, str]:
    """The evaluation's seed: eval.json's when it records one, else ppokit's rule where the run
    shows which evaluation it was (the end-of-run one, or a periodic one that kept the best)."""
    if result is None:
        return None, "no evaluation"
    if isinstance(result.get("seed"), int):
        return result["seed"], "recorded in eval.json"
    seed, updates = source.config.get("seed"), state.get("num_updates")
    if not isinstance(seed, int) or not isinstance(updates, int):
        return None, "eval.json does not record it"
    if source.which == "best":
        return seed + EVAL_SEED_OFFSET + updates, "not in eval.json; a periodic evaluation uses seed + 10000 + its update"
    if source.config.get("stop_at_return") is None:
        return seed + EVAL_SEED_OFFSET, "not in eval.json; the end-of-run evaluation uses seed + 10000"
    # The run may have stopped on a periodic evaluation (seed + 10000 + update), or run to its end.
    return None, "not in eval.json, and the run may have stopped at stop_at_return on a periodic evaluation"


def _replayable(source: Source, result: dict[str, Any] | None) -> bool:
    """Whether ``ppokit eval --seed`` plays the same episodes: a deterministic evaluation on the
    envs ppokit eval makes (the end-of-run one; a periodic one spreads more than EVAL_ENVS episodes
    over more envs). Stochastic evaluations may draw from torch's unseeded generator."""
    if result is None or not result.get("deterministic"):
        return False
    episodes = result.get("episodes")
    return source.which == "final" or (isinstance(episodes, int) and episodes <= EVAL_ENVS)


# ------------------------------------------------------------------------------------ language models

def model_files(model_dir: Path) -> list[Path]:
    """The files of a save_pretrained directory that a model needs (weights, configs, tokenizer),
    relative to it: regular files only, links neither followed nor taken, and nothing else (a
    ``credentials`` file, a ``.py``: code is never packaged). What is left out is said on stderr."""
    taken: list[Path] = []
    left: list[str] = []
    for root, dirs, names in os.walk(model_dir, followlinks=False):
        for name in sorted(names) + sorted(d for d in dirs if Path(root, d).is_symlink()):
            file = Path(root, name)
            rel = file.relative_to(model_dir)
            if file.is_symlink():
                raise CheckpointError(f"{file}: is a symbolic link; refusing to package what it points to")
            if not file.is_file():
                left.append(str(rel))
            elif name != CARD and (file.suffix in MODEL_SUFFIXES or name in MODEL_NAMES):
                taken.append(rel)
            elif name != CARD:
                left.append(str(rel))
    if left:
        log.warning("%s: left out of the package (not model files): %s", model_dir, ", ".join(sorted(left)))
    return sorted(taken)


#: The files of a save_pretrained directory that are packaged: weights, JSON configs, tokenizer files.
MODEL_SUFFIXES = (".safetensors", ".json", ".txt", ".model", ".tiktoken", ".jinja")
MODEL_NAMES = ("tokenizer.model", "vocab.txt", "merges.txt")


def check_weights(source: Source, files: list[Path] | None = None) -> None:
    """Load what is about to be packaged, so a damaged file is refused before anything is written:
    a control policy is built and its weights loaded into it (their names and shapes as state.json
    says); a language model's safetensors files must open, with the tensors their index names."""
    if source.kind == "control":
        from ppokit.control.agent import PPO

        try:
            PPO.load(source.model_dir, progress=False)
        except (CheckpointError, ConfigError) as err:
            raise CheckpointError(f"{str(err).splitlines()[0]} (nothing was packaged)") from None
        return
    from safetensors import safe_open

    named: set[str] = set()
    for rel in files or []:
        if rel.suffix != ".safetensors":
            continue
        try:
            with safe_open(str(source.model_dir / rel), framework="pt") as weights:
                for key in weights.keys():
                    weights.get_slice(key).get_shape()
                    named.add(key)
        except Exception as err:  # noqa: BLE001 - safetensors raises several types for bad files
            reason = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise CheckpointError(f"{source.model_dir / rel}: not a readable safetensors file ({reason}); "
                                  "nothing was packaged") from None
    index = read_json(source.model_dir / "model.safetensors.index.json")
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if isinstance(weight_map, dict):
        missing = sorted(set(weight_map) - named)
        if missing:
            raise CheckpointError(f"{source.model_dir / 'model.safetensors.index.json'}: names {len(missing)} tensor(s) "
                                  f"no weight file holds (e.g. {missing[0]}); nothing was packaged")


def _lm_files(source: Source, out_name: str, license: str) -> Callable[[Path], None]:
    files = model_files(source.model_dir)
    if not any(p.suffix == ".safetensors" for p in files):
        log.warning("%s holds no .safetensors weights; packaging the files it has", source.model_dir)
    check_weights(source, files)
    facts = _lm_facts(source, out_name, license)

    def fill(tmp: Path) -> None:
        for rel in files:
            _copy(source.model_dir / rel, tmp / rel)
        _copy_config(source.run_dir / "config.yaml", tmp / "ppokit_config.yaml")
        facts.picture_note = _draw(source, tmp / PICTURE)
        (tmp / CARD).write_text(lm_card(facts), encoding="utf-8")

    return fill


def _lm_facts(source: Source, out_name: str, license: str) -> LMFacts:
    c, run = source.config, source.run_dir
    start = c.get("policy") if source.kind == "rlhf ppo" else c.get("model")
    base, started_from = _base_model(start)
    results: list[tuple[str, Any]] = []
    head, updates = None, None
    if source.kind == "rlhf ppo":
        rows = metrics_rows(run / "metrics.jsonl")
        if source.which == "checkpoint":  # rows logged after the checkpoint are of weights not packaged
            updates = _update_of(source.model_dir.parent)
            rows = [r for r in rows if isinstance(r.get("update"), int) and r["update"] <= updates]
        summary = read_json(run / "summary.json") if source.which == "final" else None
        updates = (summary or {}).get("updates", rows[-1].get("update") if rows else None) if updates is None else updates
        if summary:
            results += [("reward score, first 10% of updates", _fmt(summary.get("score_first"))),
                        ("reward score, last 10% of updates", _fmt(summary.get("score_last"))),
                        ("KL to the reference, last 10% of updates", _fmt(summary.get("kl_last")))]
        if rows:
            last = rows[-1]
            results += [(f"{key} at the last update ({last.get('update')})", _fmt(last[key]))
                        for key in ("score", "score_raw", "kl", "kl_coef", "response_length", "eos_rate") if key in last]
        note = ("Scores are the reward sources' (normalised) scores of the policy's own completions during training; "
                "KL is summed over a completion's tokens, in nats.")
    elif source.kind == "sft":
        rows = metrics_rows(run / "metrics.jsonl")
        if rows and "loss" in rows[-1]:
            results.append((f"training loss at the last step ({rows[-1].get('step')})", _fmt(rows[-1]["loss"])))
        note = "The loss is the mean cross-entropy of the response tokens."
    else:
        summary = read_json(run / "eval.json") or {}
        results += [(k.replace("_", " "), _fmt(summary[k])) for k in
                    ("eval_accuracy", "eval_pairs", "train_accuracy", "reward_mean", "reward_std") if k in summary]
        note = "Accuracy: how often the preferred response of a held-out pair scores higher."
        meta = read_json(source.model_dir / "ppokit_reward.json") or {}
        head = meta.get("head") if isinstance(meta.get("head"), str) else None
    if not results:
        note = "The run recorded no results (no metrics rows)."
    # Language-model runs record the ppokit that trained them nowhere yet; read it once their summary has it.
    done = read_json(run / ("summary.json" if source.kind == "rlhf ppo" else "eval.json")) or {}
    return LMFacts(source.kind, c, source.which, results, note, base, started_from, head, None, out_name, license,
                   updates, done.get("ppokit_version"))


def _fmt(value: Any) -> Any:
    return f"{value:.4g}" if isinstance(value, float) else value


def _base_model(start: Any) -> tuple[str | None, str]:
    """The hub model a run started from (for ``base_model``), and how the card names the start: a
    hub id as it is; a local SFT run's ``model`` directory through that run's own config."""
    if hub_id(start):
        return str(start), f"`{start}`"
    if not isinstance(start, str) or not start:
        return None, "an unnamed model"
    path = Path(start)
    if path.name == "model" and (path.parent / "config.yaml").is_file():
        try:
            parent, kind = read_config(path.parent)
        except CheckpointError:
            parent, kind = {}, ""
        if kind == "sft" and hub_id(parent.get("model")):
            return str(parent["model"]), f"an SFT run's model (fine-tuned from `{parent['model']}`)"
    return None, f"a local model (`{path.name}`)"

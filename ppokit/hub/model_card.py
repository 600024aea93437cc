"""Model cards (a hub repository's ``README.md``) for ``ppokit package``, written from a run's files.

A card is YAML front matter the Hugging Face Hub reads (``library_name``, ``license``, ``tags``,
``base_model``, and for control policies a ``model-index`` with the evaluation as the RL Zoo's cards
have it) followed by Markdown. Everything shown comes from plain data already read from the run
(config.yaml, state.json, eval.json, metrics.jsonl): building a card imports nothing a run names.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml

from ppokit._version import __version__
from ppokit.urls import redact_values

#: What the Hub accepts as a repository name; anything else in the card's commands becomes ``<repo>``.
_REPO_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}")
#: A hub model id as the run recorded it (local paths are recorded absolute, so these are not paths).
_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?")


@dataclass
class Card:
    """What a card says, gathered by :mod:`ppokit.hub.package`; :func:`render` writes it."""

    front_matter: dict[str, Any]
    title: str
    description: list[str]
    sections: list[tuple[str, list[str]]] = field(default_factory=list)


def hub_id(value: Any) -> str | None:
    """``value`` when it reads as a hub model id (``gpt2``, ``org/model``), else None (a local path)."""
    if isinstance(value, str) and _HUB_ID.fullmatch(value) and ".." not in value:
        return value
    return None


def repo_name(out_name: str) -> str:
    return out_name if _REPO_NAME.fullmatch(out_name) and ".." not in out_name else "<repo>"


def cell(value: Any) -> str:
    """A config value as one Markdown table cell, written as YAML writes scalars."""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif value is None:
        text = "null"
    elif isinstance(value, (list, dict)):
        text = json.dumps(value)
    else:
        text = str(value)
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ") or '""'


def number(value: Any, digits: int = 2) -> str:
    """A figure from a JSON file; NaN and infinities were written as null."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return "not finite (NaN/inf)"
    return f"{value:.{digits}f}"


def count(value: Any) -> str:
    """A counter from state.json, with thousands separators when it is a number."""
    return f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else str(value)


def table(rows: Sequence[tuple[Any, Any]], header: tuple[str, str] = ("", "")) -> list[str]:
    return [f"| {header[0]} | {header[1]} |", "|---|---|", *(f"| {cell(k)} | {cell(v)} |" for k, v in rows)]


def hyperparameters(config: Mapping[str, Any], file: str) -> list[str]:
    return [f"Every field of the run's config (`{file}` in this directory):", "",
            *table(list(config.items()), ("field", "value"))]


def picture_section(picture_note: str | None) -> list[str]:
    if picture_note is None:
        return ["![learning curves](curves.png)", "", "Drawn by `ppokit plot` from the run's metrics.jsonl."]
    return [f"No picture: {picture_note}."]


def push_section(out_name: str) -> list[str]:
    repo = repo_name(out_name)
    return ["Uploaded with huggingface_hub's command line (`pip install huggingface_hub`, then `hf auth login`):",
            "", "```bash", f"hf upload <user>/{repo} {out_name}", "```"]


def versions(trained_with: Any) -> list[str]:
    trained = f"Trained with ppokit {trained_with}" if trained_with else "The run does not record the ppokit version that trained it"
    return [f"{trained}; packaged with ppokit {__version__} (`ppokit package`)."]


def render(card: Card) -> str:
    """The card's text: front matter, title, description, then each section."""
    front = yaml.safe_dump(card.front_matter, sort_keys=False, allow_unicode=True, default_flow_style=False)
    lines = ["---", front.rstrip("\n"), "---", "", f"# {card.title}", "", *card.description]
    for heading, body in card.sections:
        lines += ["", f"## {heading}", "", *body]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------- control

@dataclass
class ControlFacts:
    """What a control card shows, read from the run."""

    config: dict[str, Any]
    state: dict[str, Any]
    which: str  # 'final', 'best' or 'checkpoint'
    evaluation: dict[str, Any] | None
    eval_note: str  # why there is no evaluation, or which one it is
    eval_seed: int | None  # the evaluation's seed, when the run tells it
    eval_seed_note: str  # how that seed is known, or why it is not
    eval_replayable: bool  # `ppokit eval --seed` plays the same episodes (see packaging._replayable)
    picture_note: str | None
    out_name: str
    license: str


def _env_tag(env_id: str) -> str:
    # A 'module:Env' id is no tag the Hub can list runs under; the class name is.
    return env_id.rsplit(":", 1)[-1] if ":" in env_id else env_id


def control_card(f: ControlFacts) -> str:
    env_id = str(f.config.get("env_id"))
    steps, updates = f.state.get("global_step"), f.state.get("num_updates")
    front: dict[str, Any] = {
        "library_name": "ppokit",
        "license": f.license,
        "tags": ["reinforcement-learning", "deep-reinforcement-learning", "ppo", "ppokit", _env_tag(env_id)],
    }
    result = f.evaluation
    if result is not None:
        front["model-index"] = [{"name": "PPO", "results": [{
            "task": {"type": "reinforcement-learning", "name": "reinforcement-learning"},
            "dataset": {"name": env_id, "type": env_id},
            "metrics": [{"type": "mean_reward", "name": "mean_reward", "verified": False,
                         "value": f"{number(result.get('mean_return'))} +/- {number(result.get('std_return'))}"}],
        }]}]
    which = {"final": "the final policy of the run",
             "best": f"the run's best policy (`RUN_DIR/best`: the best periodic evaluation, at env step {count(steps)})",
             "checkpoint": f"the run's latest checkpoint (update {updates}): the run stopped before its end"}[f.which]
    description = [f"A PPO policy for `{env_id}`, trained with ppokit for {count(steps)} env steps ({updates} updates, "
                   f"seed {f.config.get('seed')}). This directory holds {which}."]
    return render(Card(front, f"PPO agent for {env_id}", description, [
        ("Evaluation", _control_evaluation(f)),
        ("Learning curves", picture_section(f.picture_note)),
        ("Usage", _control_usage(f, env_id)),
        ("Hyperparameters", hyperparameters(redact_values(f.config), "config.yaml")),
        ("Files", ["- `model.safetensors`: the policy's weights and its observation/return normalisation statistics",
                   "- `state.json`: the spaces, config and counters that `PPO.load` reads",
                   "- `config.yaml`: the run's config" + (", `eval.json`: the evaluation" if result else "")
                   + ("" if f.picture_note else ", `curves.png`: the learning curves")]),
        ("Versions", versions(f.state.get("ppokit_version"))),
        ("Sharing", push_section(f.out_name)),
    ]))


def _control_evaluation(f: ControlFacts) -> list[str]:
    result = f.evaluation
    if result is None:
        return [f"{f.eval_note} `ppokit eval DIR --episodes 20` measures one (it plays the env)."]
    mode = "deterministic (the policy's mode)" if result.get("deterministic") else "stochastic (sampled actions)"
    rows = [
        ("mean return", f"{number(result.get('mean_return'))} ± {number(result.get('std_return'))}"),
        ("min / max return", f"{number(result.get('min_return'))} / {number(result.get('max_return'))}"),
        ("mean episode length", number(result.get("mean_length"), 1)),
        ("episodes", result.get("episodes")),
        ("actions", mode),
        ("evaluation seed", f"{'not recorded' if f.eval_seed is None else f.eval_seed} ({f.eval_seed_note})"),
        ("training seed", f.config.get("seed")),
        ("policy at env step", result.get("global_step")),
    ]
    return [*table(rows), "", f"{f.eval_note} Returns are the env's own rewards, summed without discount, "
            "normalisation or clipping, over whole episodes on envs separate from training."]


def _control_usage(f: ControlFacts, env_id: str) -> list[str]:
    repo, name = repo_name(f.out_name), f.out_name
    made_by_id = ":" not in env_id
    env_line = (f'env = gym.make("{env_id}")' if made_by_id
                else f"env = ...  # an instance of {env_id}; ppokit imports no module a downloaded file names")
    eval_flags = "" if made_by_id else f" --env {env_id}"
    lines = ["```python", "import gymnasium as gym", "from huggingface_hub import snapshot_download", "",
             "from ppokit import PPO", "",
             f'agent = PPO.load(snapshot_download("<user>/{repo}"))  # or PPO.load("path/to/{name}")', env_line,
             "obs, info = env.reset(seed=0)", "action = agent.predict(obs)  # deterministic; deterministic=False samples",
             "```", "", "From the command line (`hf download` fetches the directory):", "", "```bash",
             f"hf download <user>/{repo} --local-dir {name}"]
    result = f.evaluation
    if result is not None and f.eval_seed is not None and f.eval_replayable:
        lines.append(f"ppokit eval {name} --episodes {result.get('episodes')} --seed {f.eval_seed}"
                     f"{eval_flags}  # plays the evaluation above again")
    else:
        lines.append(f"ppokit eval {name} --episodes 20{eval_flags}")
    return [*lines, "```"]


# --------------------------------------------------------------------------------- language models

@dataclass
class LMFacts:
    """What a language-model card (RLHF PPO, SFT or reward model) shows, read from the run."""

    kind: str  # 'rlhf ppo', 'sft' or 'reward'
    config: dict[str, Any]
    which: str  # 'final' or 'checkpoint'
    results: list[tuple[str, Any]]
    results_note: str
    base_model: str | None
    started_from: str
    reward_head: str | None  # a reward model's head: 'classification' or 'value_head'
    picture_note: str | None
    out_name: str
    license: str
    updates: Any = None  # PPO updates done by the packaged weights
    trained_with: Any = None


_LM_TAGS = {"rlhf ppo": ["ppo", "rlhf", "ppokit"], "sft": ["sft", "ppokit"], "reward": ["reward-model", "rlhf", "ppokit"]}
_LM_TITLES = {"rlhf ppo": "a causal language model tuned with PPO (RLHF)",
              "sft": "a causal language model fine-tuned on responses (SFT)",
              "reward": "a reward model trained on preferences"}


def lm_card(f: LMFacts) -> str:
    value_head = f.reward_head == "value_head"
    front: dict[str, Any] = {"library_name": "ppokit" if value_head else "transformers", "license": f.license,
                             "tags": list(_LM_TAGS[f.kind])}
    if f.base_model:
        front["base_model"] = f.base_model
    if f.kind in ("rlhf ppo", "sft"):
        front["pipeline_tag"] = "text-generation"
    c = redact_values(f.config)  # a reward URL's credentials never reach a card
    data = f"`{c['data']}`" if c.get("data") else "rows given in code"
    if f.kind == "rlhf ppo":
        rewards = ", ".join(f"`{r}`" for r in c.get("rewards") or []) or "reward functions given in code"
        prompts = f"the prompts of `{c['data']}`" if c.get("data") else "prompts given in code"
        what = (f"Tuned with PPO for {f.updates} updates, starting from {f.started_from}, against {rewards}, on "
                f"{prompts} (seed {c.get('seed')}).")
    else:
        what = f"Trained from {f.started_from} on {data} (seed {c.get('seed')})."
    if f.which == "checkpoint":
        what += " These are the weights of the run's latest checkpoint: the run stopped before its end."
    sections = [
        ("Results", [*table(f.results), "", f.results_note] if f.results else [f.results_note]),
        ("Learning curves", picture_section(f.picture_note)),
        ("Usage", _lm_usage(f)),
        ("Hyperparameters", hyperparameters(c, "ppokit_config.yaml")),
        ("Versions", versions(f.trained_with)),
        ("Sharing", push_section(f.out_name)),
    ]
    title = f"{repo_name(f.out_name)}: {_LM_TITLES[f.kind]}"
    return render(Card(front, title, [what], sections))


def _lm_usage(f: LMFacts) -> list[str]:
    repo = f"<user>/{repo_name(f.out_name)}"
    if f.kind == "reward":
        lines = ["As a reward source of a PPO run (its output normalisation, `ppokit_reward.json`, applied):", "",
                 "```bash", f"hf download {repo} --local-dir {f.out_name}",
                 f"ppokit rlhf ppo --policy POLICY --data PROMPTS --reward {f.out_name}", "```"]
        if f.reward_head == "classification":
            lines += ["", "```python", "from transformers import AutoModelForSequenceClassification",
                      f'model = AutoModelForSequenceClassification.from_pretrained("{repo}")  # raw, unnormalised scores',
                      "```"]
        return lines
    return ["```python", "from transformers import AutoModelForCausalLM, AutoTokenizer", "",
            f'model = AutoModelForCausalLM.from_pretrained("{repo}")  # or the local directory',
            f'tokenizer = AutoTokenizer.from_pretrained("{repo}")',
            'inputs = tokenizer("Your prompt", return_tensors="pt")',
            f"output = model.generate(**inputs, max_new_tokens={f.config.get('max_new_tokens', 64)}, do_sample=True)",
            "print(tokenizer.decode(output[0], skip_special_tokens=True))", "```"]

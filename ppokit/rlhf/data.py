"""Reading and checking RLHF data: prompts, prompt/response pairs and human preferences.

Sources are a file (JSONL/JSON, CSV or Parquet), a ``datasets.Dataset``, or a list of dicts. Every
row is checked before any training starts; a malformed row stops the run with a message naming the
file and row (and line, for JSONL), unless the user asked to skip bad rows, in which case they are
counted and reported.

JSONL is parsed line by line here rather than through ``datasets``: that is what lets a broken line
be reported by its line number. CSV and Parquet go through ``datasets``.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ppokit.errors import ConfigError
from ppokit.rlhf.config import RewardConfig

log = logging.getLogger("ppokit")


class DataError(ConfigError):
    """A data file or row is malformed."""


@dataclass
class Row:
    """One record with where it came from, so errors can point at it."""

    values: Mapping[str, Any]
    where: str


@dataclass
class Loaded:
    """Rows that passed the checks, and how many were skipped."""

    rows: list[dict[str, Any]]
    skipped: int = 0
    source: str = ""
    problems: list[str] = field(default_factory=list)


def _read_jsonl(path: Path) -> list[Row]:
    rows = []
    with open(path, encoding="utf-8-sig") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            where = f"{path}, line {lineno}"
            try:
                value = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"{where}: broken JSON ({err.msg} at column {err.colno})") from None
            if not isinstance(value, dict):
                raise DataError(f"{where}: expected a JSON object per line, got {type(value).__name__}")
            rows.append(Row(value, where))
    return rows


def _read_json(path: Path) -> list[Row]:
    text = path.read_text(encoding="utf-8-sig")
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        if err.lineno > 1 or "\n" in text.strip():
            return _read_jsonl(path)  # a .json file written one object per line
        raise DataError(f"{path}, line {err.lineno}: broken JSON ({err.msg})") from None
    if isinstance(value, dict):
        return [Row(value, f"{path}")]
    if not isinstance(value, list):
        raise DataError(f"{path}: expected a list of objects, got {type(value).__name__}")
    out = []
    for i, item in enumerate(value):
        if not isinstance(item, dict):
            raise DataError(f"{path}, item {i}: expected an object, got {type(item).__name__}")
        out.append(Row(item, f"{path}, item {i}"))
    return out


def _read_with_datasets(path: Path, kind: str) -> list[Row]:
    try:
        import datasets
    except ImportError as err:  # pragma: no cover - the rlhf extra installs it
        raise DataError(f"{path}: reading {kind} files needs the 'datasets' package (pip install ppokit[rlhf])") from err
    datasets.disable_progress_bars()
    try:
        if kind == "csv":
            ds = datasets.Dataset.from_csv(str(path), keep_in_memory=True)
        else:
            ds = datasets.Dataset.from_parquet(str(path), keep_in_memory=True)
    except Exception as err:  # datasets/pyarrow raise many types for a broken file
        raise DataError(f"{path}: could not read as {kind}: {str(err).splitlines()[0] if str(err) else type(err).__name__}") from None
    # CSV: row 0 is on line 2, after the header.
    label = (lambda i: f"{path}, row {i} (line {i + 2})") if kind == "csv" else (lambda i: f"{path}, row {i}")
    return [Row(dict(values), label(i)) for i, values in enumerate(ds)]


def read_rows(source: Any) -> tuple[list[Row], str]:
    """Read ``source`` (a path, a ``datasets.Dataset``, or a list of dicts) into located rows."""
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not str(source):
            raise DataError("no data file given (set the 'data' field or pass a dataset)")
        if not path.is_file():
            raise DataError(f"data file {str(path)!r} does not exist")
        suffix = path.suffix.lower()
        try:
            if suffix in (".jsonl", ".ndjson"):
                return _read_jsonl(path), str(path)
            if suffix == ".json":
                return _read_json(path), str(path)
        except UnicodeDecodeError:
            raise DataError(f"{path}: not a UTF-8 text file") from None
        if suffix == ".csv":
            return _read_with_datasets(path, "csv"), str(path)
        if suffix in (".parquet", ".pq"):
            return _read_with_datasets(path, "parquet"), str(path)
        raise DataError(f"{path}: unknown data file type {suffix!r}; use .jsonl, .json, .csv or .parquet")
    if isinstance(source, Mapping):
        raise DataError("data: expected rows (a list of dicts or a datasets.Dataset), got a single mapping")
    if isinstance(source, Iterable):
        rows = []
        for i, item in enumerate(source):
            if not isinstance(item, Mapping):
                raise DataError(f"dataset row {i}: expected a mapping of column: value, got {type(item).__name__}")
            rows.append(Row(dict(item), f"dataset row {i}"))
        return rows, "dataset"
    raise DataError(f"data: expected a file path, a datasets.Dataset or a list of dicts, got {type(source).__name__}")


# ---- field checks ---------------------------------------------------------------------------

def _text(value: Any, name: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{name} must be text, got {type(value).__name__}")
    if not value.strip():
        raise ValueError(f"{name} is empty")
    return value


def _text_list(value: Any, name: str) -> list[str]:
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"{name} must be a list of texts, got {type(value).__name__}")
    if len(value) < 2:
        raise ValueError(f"{name} must hold at least 2 responses, got {len(value)}")
    return [_text(v, f"{name}[{i}]") for i, v in enumerate(value)]


def _number(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number, got {type(value).__name__}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return float(value)


def _number_list(value: Any, name: str) -> list[float]:
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"{name} must be a list of numbers, got {type(value).__name__}")
    return [_number(v, f"{name}[{i}]") for i, v in enumerate(value)]


CHECKS = {"text": _text, "texts": _text_list, "number": _number, "numbers": _number_list}


def check_rows(
    rows: Sequence[Row],
    fields: Mapping[str, tuple[str, str]],
    source: str,
    skip_bad_rows: bool = False,
) -> Loaded:
    """Check every row has each field, of the right kind.

    ``fields`` maps the logical name (``prompt``) to ``(column, kind)`` with kind one of
    ``text``, ``texts``, ``number``, ``numbers``. Returns rows keyed by the logical names.
    """
    out = Loaded(rows=[], source=source)
    if not rows:
        raise DataError(f"{source}: holds no rows")
    for row in rows:
        try:
            record: dict[str, Any] = {}
            for name, (column, kind) in fields.items():
                if column not in row.values or row.values[column] is None:
                    raise ValueError(f"field {name!r} (column {column!r}) is missing")
                label = name if column == name else f"{name} (column {column!r})"
                record[name] = CHECKS[kind](row.values[column], label)
            if "responses" in record and "ranking" in record and len(record["responses"]) != len(record["ranking"]):
                raise ValueError(
                    f"ranking has {len(record['ranking'])} entries but responses has {len(record['responses'])}"
                )
        except ValueError as err:
            if not skip_bad_rows:
                raise DataError(f"{row.where}: {err}") from None
            out.skipped += 1
            if len(out.problems) < 5:
                out.problems.append(f"{row.where}: {err}")
            continue
        record["_where"] = row.where
        out.rows.append(record)
    if not out.rows:
        raise DataError(f"{source}: every row was malformed ({out.skipped} skipped); first: {out.problems[0]}")
    if out.skipped:
        log.warning("%s: skipped %d malformed row(s); first: %s", source, out.skipped, out.problems[0])
    return out


def load(source: Any, fields: Mapping[str, tuple[str, str]], skip_bad_rows: bool = False) -> Loaded:
    """Read ``source`` and check its rows (see :func:`check_rows`)."""
    rows, name = read_rows(source)
    return check_rows(rows, fields, name, skip_bad_rows)


def drop_long(
    loaded: Loaded, lengths_of: Callable[[list[dict[str, Any]]], Sequence[int]], limit: int, what: str,
    field_name: str, skip_bad_rows: bool, chunk: int = 256,
) -> Loaded:
    """Reject (or skip and count) rows whose token length is over ``limit``.

    ``lengths_of(rows)`` tokenizes a chunk of rows (it may keep the tokens on them) and returns their
    lengths: a chunk at a time, so a bad row early in a large file is reported before the rest is
    tokenized."""
    kept = []
    pairs = ((record, n) for start in range(0, len(loaded.rows), chunk)
             for record, n in zip(loaded.rows[start:start + chunk], lengths_of(loaded.rows[start:start + chunk])))
    for record, n in pairs:
        if n > limit:
            message = f"{record['_where']}: {what} is {n} tokens, over the limit of {limit} (field {field_name!r})"
            if not skip_bad_rows:
                raise DataError(message)
            loaded.skipped += 1
            if len(loaded.problems) < 5:
                loaded.problems.append(message)
            continue
        kept.append(record)
    if not kept:
        raise DataError(f"{loaded.source}: every row is over the length limit; first: {loaded.problems[0]}")
    if len(kept) < len(loaded.rows):
        log.warning("%s: skipped %d over-long row(s)", loaded.source, len(loaded.rows) - len(kept))
    loaded.rows = kept
    return loaded


# ---- preferences ----------------------------------------------------------------------------

def ranking_to_pairs(responses: Sequence[str], ranking: Sequence[float]) -> list[tuple[str, str]]:
    """All ``(chosen, rejected)`` pairs of a K-way ranking, as InstructGPT trains on them.

    ``ranking[i]`` is the rank of ``responses[i]``, lower = better (1 is best). Every pair with
    different ranks yields one comparison, so K responses give up to K(K−1)/2 pairs; ties give none.
    """
    if len(responses) != len(ranking):
        raise ValueError(f"ranking has {len(ranking)} entries but there are {len(responses)} responses")
    pairs = []
    for i, j in itertools.combinations(range(len(responses)), 2):
        if ranking[i] < ranking[j]:
            pairs.append((responses[i], responses[j]))
        elif ranking[j] < ranking[i]:
            pairs.append((responses[j], responses[i]))
    return pairs


def ratings_to_pairs(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Pairs from scalar ratings: within each prompt, every higher-rated response beats every
    lower-rated one (equal ratings give no pair)."""
    by_prompt: dict[str, list[tuple[str, float]]] = {}
    where: dict[str, str] = {}
    for row in rows:
        by_prompt.setdefault(row["prompt"], []).append((row["response"], row["rating"]))
        where.setdefault(row["prompt"], row.get("_where", ""))
    pairs = []
    for prompt, rated in by_prompt.items():
        responses = [r for r, _ in rated]
        ranks = [-score for _, score in rated]
        for chosen, rejected in ranking_to_pairs(responses, ranks):
            pairs.append({"prompt": prompt, "chosen": chosen, "rejected": rejected, "_where": where[prompt]})
    return pairs


def detect_format(columns: Iterable[str], config: RewardConfig) -> str:
    """Which preference format the columns hold, for ``format: auto``."""
    cols = set(columns)
    if {config.chosen_column, config.rejected_column} <= cols:
        return "pairs"
    if {config.responses_column, config.ranking_column} <= cols:
        return "rankings"
    if {config.response_column, config.rating_column} <= cols:
        return "ratings"
    raise DataError(
        "cannot tell the preference format from the columns "
        f"{sorted(cols)}: expected {config.chosen_column!r}/{config.rejected_column!r} (pairs), "
        f"{config.responses_column!r}/{config.ranking_column!r} (rankings) or "
        f"{config.response_column!r}/{config.rating_column!r} (ratings); set 'format' and the column names"
    )


def load_preferences(source: Any, config: RewardConfig) -> tuple[str, Loaded]:
    """Read preference data in any of the three formats; returns ``(format, loaded)``.

    ``pairs`` rows come back as prompt/chosen/rejected, ``rankings`` are expanded into all their
    pairs, ``ratings`` are either turned into pairs or kept as prompt/response/rating rows when
    ``ratings_as='regression'``.
    """
    rows, name = read_rows(source)
    fmt: str = config.format
    if fmt == "auto":
        if not rows:
            raise DataError(f"{name}: holds no rows")
        fmt = detect_format(rows[0].values.keys(), config)
    prompt = ("prompt", (config.prompt_column, "text"))
    if fmt == "pairs":
        spec = dict([prompt, ("chosen", (config.chosen_column, "text")), ("rejected", (config.rejected_column, "text"))])
        return "pairs", check_rows(rows, spec, name, config.skip_bad_rows)
    if fmt == "rankings":
        spec = dict([prompt, ("responses", (config.responses_column, "texts")), ("ranking", (config.ranking_column, "numbers"))])
        loaded = check_rows(rows, spec, name, config.skip_bad_rows)
        pairs = []
        for row in loaded.rows:
            for chosen, rejected in ranking_to_pairs(row["responses"], row["ranking"]):
                pairs.append({"prompt": row["prompt"], "chosen": chosen, "rejected": rejected, "_where": row["_where"]})
        if not pairs:
            raise DataError(f"{name}: the rankings hold no pair with different ranks")
        loaded.rows = pairs
        return "pairs", loaded
    spec = dict([prompt, ("response", (config.response_column, "text")), ("rating", (config.rating_column, "number"))])
    loaded = check_rows(rows, spec, name, config.skip_bad_rows)
    if config.ratings_as == "regression":
        return "ratings", loaded
    pairs = ratings_to_pairs(loaded.rows)
    if not pairs:
        raise DataError(f"{name}: no prompt has two responses with different ratings, so there are no pairs")
    loaded.rows = pairs
    return "pairs", loaded


class PromptLoader:
    """Endless shuffled batches of prompts; its position (epoch, offset) is part of the state."""

    def __init__(self, prompts: list[str], batch_size: int, seed: int) -> None:
        self.prompts = prompts
        self.batch_size = batch_size
        self.seed = seed
        self.epoch = 0
        self.offset = 0
        self._order = self._shuffle()

    def _shuffle(self) -> list[int]:
        import torch

        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return torch.randperm(len(self.prompts), generator=generator).tolist()

    def next(self) -> list[str]:
        batch: list[str] = []
        while len(batch) < self.batch_size:
            if self.offset >= len(self._order):
                self.epoch += 1
                self.offset = 0
                self._order = self._shuffle()
            batch.append(self.prompts[self._order[self.offset]])
            self.offset += 1
        return batch

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "offset": self.offset}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.offset = int(state["epoch"]), int(state["offset"])
        self._order = self._shuffle()


def split_by_prompt(rows: list[dict], fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """Hold out whole prompts (not single rows), so no held-out prompt was seen in training."""
    prompts = sorted({r["prompt"] for r in rows})
    if fraction <= 0 or len(prompts) < 2:
        return rows, []
    random.Random(seed).shuffle(prompts)
    n_eval = max(1, round(len(prompts) * fraction))
    held = set(prompts[:n_eval])
    return [r for r in rows if r["prompt"] not in held], [r for r in rows if r["prompt"] in held]

"""Every command that reads a run's files (``info``, ``plot``, ``package``, ``resume``) × every kind of
damage to metrics.jsonl and config.yaml (issue 30, class 5): never a traceback. A damaged metrics
line is skipped by the one reader (:func:`ppokit.io.run_info.metrics_rows`) with one warning naming
the file, how many and the first; a damaged config.yaml is one error line naming it.

Without the fix, 42 of these 60 cases failed: they raised (UnicodeDecodeError, KeyError, ValueError, RecursionError)
or skipped damage without a word."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest

from ppokit.cli.main import main
from ppokit.io.metrics import read_rows

SAVED = Path(__file__).resolve().parents[1] / "fixtures" / "saved_runs" / "control"
GOOD = (SAVED / "metrics.jsonl").read_bytes()

#: metrics.jsonl damage: what the file holds, and whether the readers must say they skipped a line.
METRICS = {
    "non-UTF-8 line": (GOOD + b"\xff\xfe{not text}\n", True),
    "non-UTF-8 inside a row": (GOOD.replace(b'"update"', b'"upd\xffate"', 1), True),
    "missing global_step": (GOOD + b'{"update": 9, "episodic_return": 1.0}\n', True),
    "non-integer global_step": (GOOD + b'{"global_step": "abc", "update": 9}\n', True),
    "400-digit global_step": (GOOD + b'{"global_step": ' + b"9" * 400 + b', "update": 9}\n', True),
    "400-digit metric": (GOOD + b'{"global_step": 600, "update": 3, "episodic_return": ' + b"9" * 400 + b"}\n", True),
    "100000 nested [": (GOOD + b"[" * 100_000 + b"\n", True),
    "deep nesting in a row": (GOOD + b'{"global_step": 1, "x": ' + b"[" * 100_000 + b"\n", True),
    "not an object": (GOOD + b"[1, 2, 3]\n", True),
    "truncated last line": (GOOD + b'{"global_step": 7', False),
    "empty file": (b"", False),
}
#: config.yaml damage: the readers of config.yaml refuse it in one line naming the file.
CONFIGS = {
    "config not UTF-8": b"env_id: \xff\n",
    "config not a mapping": b"- a\n- b\n",
    "config nested 100000 deep": b"[" * 100_000 + b"\n",
    "config mapping nested deep": b"a: " + b"[" * 5_000 + b"\n",
    "config with a non-integer total_steps": (SAVED / "config.yaml").read_bytes().replace(
        b"total_steps: 1024", b"total_steps: lots"),
}
COMMANDS = ("info", "plot", "package", "resume")


def _argv(command: str, run: Path, tmp_path: Path) -> list[str]:
    return {"info": ["info", str(run)],
            "plot": ["plot", str(run), "-o", str(tmp_path / "curves.png")],
            "package": ["package", str(run), str(tmp_path / "package")],
            # The checkpoint is at step 512: nothing is left to train, only to finish (no new rows).
            "resume": ["resume", str(run), "--total-steps", "512", "--no-progress"]}[command]


def _run(command: str, run: Path, tmp_path: Path, capsys, caplog) -> tuple[int, list[str], str]:
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="ppokit"):
        code = main(_argv(command, run, tmp_path))  # any exception but PPOKitError escapes and fails the test
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("ppokit: error:")]
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    return code, errors, "\n".join(warnings)


def _copy(tmp_path: Path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(SAVED, run)
    return run


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("damage", list(METRICS))
def test_damaged_metrics_lines_are_skipped_and_counted(damage, command, tmp_path, capsys, caplog):
    data, reported = METRICS[damage]
    run = _copy(tmp_path)
    (run / "metrics.jsonl").write_bytes(data)
    (tmp_path / "before.jsonl").write_bytes(data)
    code, errors, warnings = _run(command, run, tmp_path, capsys, caplog)
    if command == "plot" and damage == "empty file":
        assert code == 2 and errors == ["ppokit: error: plot: the runs have no metrics rows yet"]
        return
    assert code == 0, errors
    if command == "resume":
        # Resume keeps damaged lines as they are (the readers skip them) and drops only the torn one.
        kept = (run / "metrics.jsonl").read_bytes()
        assert kept.endswith(b"\n") or kept == b""
        rows, skipped = read_rows(run / "metrics.jsonl", "global_step")
        before = read_rows(tmp_path / "before.jsonl", "global_step")[0]
        assert [r["update"] for r in rows] == [r["update"] for r in before if r["update"] <= 2]
        if reported and damage not in ("missing global_step", "400-digit metric"):  # those two rows are past update 2
            assert skipped, "resume dropped the damaged line"
        return
    skipped = [w for w in warnings.splitlines() if "damaged line" in w]
    if reported:
        assert skipped == [f"{run / 'metrics.jsonl'}: " + skipped[0].split(": ", 1)[1]]
        assert "skipped 1 damaged line (line " in skipped[0]
    else:
        assert skipped == []


@pytest.mark.parametrize("command", ("info", "plot", "package"))
@pytest.mark.parametrize("damage", list(CONFIGS))
def test_a_damaged_config_is_one_line_naming_it(damage, command, tmp_path, capsys, caplog):
    run = _copy(tmp_path)
    (run / "config.yaml").write_bytes(CONFIGS[damage])
    code, errors, _ = _run(command, run, tmp_path, capsys, caplog)
    if damage == "config with a non-integer total_steps" and command != "info":
        assert code == 0  # plot and package do not use the budget
        return
    assert code == 2 and len(errors) == 1
    assert str(run / "config.yaml") in errors[0]


def test_resume_reads_its_config_from_the_checkpoint_and_rewrites_a_damaged_config_yaml(tmp_path, capsys, caplog):
    run = _copy(tmp_path)
    (run / "config.yaml").write_bytes(CONFIGS["config nested 100000 deep"])
    code, errors, _ = _run("resume", run, tmp_path, capsys, caplog)
    assert code == 0, errors
    assert (run / "config.yaml").read_text(encoding="utf-8").startswith("env_id: CartPole-v1")

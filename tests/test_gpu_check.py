"""benchmarks/gpu_check.py, the one command that checks every GPU path: its ``--dry-run`` runs every
section's code on the CPU at toy sizes, so the script cannot rot between the runs on a GPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = ["cuda_tests", "torch_env", "atari", "fsdp", "memory", "rlhf"]


def _check(tmp_path: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--out", str(tmp_path), *args],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=timeout)


def _report(out: Path) -> dict[str, Any]:
    def refuse(constant: str) -> None:
        raise AssertionError(f"{constant} in gpu_check.json")

    return json.loads((out / "gpu_check.json").read_text(), parse_constant=refuse)  # NaN, Infinity: refused


def test_the_dry_run_runs_every_section_and_reports_ok_or_skipped_with_a_reason(tmp_path):
    pytest.importorskip("transformers")
    proc = _check(tmp_path, "--dry-run")
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = _report(tmp_path)
    sections = {s["name"]: s for s in report["sections"]}
    assert list(sections) == SECTIONS and report["dry_run"] is True
    for s in report["sections"]:
        assert s["status"] in ("ok", "skipped"), (s["name"], s["reason"])
        assert s["status"] == "ok" or s["reason"], s["name"]
        assert s["wall_s"] > 0 and all(isinstance(v, (int, float)) for v in s["numbers"].values()), s
        for row in s["rows"]:
            assert row["status"] in ("ok", "skipped") and (row["status"] == "ok" or row["reason"]), (s["name"], row)

    # The CUDA-only tests were found and, without CUDA, skipped (with CUDA they ran).
    cuda = sections["cuda_tests"]
    assert cuda["numbers"]["test_files"] >= 1 and cuda["numbers"]["failed"] == cuda["numbers"]["errors"] == 0
    if not torch.cuda.is_available():
        assert cuda["status"] == "skipped" and cuda["reason"].startswith("no CUDA") and cuda["numbers"]["skipped"] >= 1
    # ppokit's side of every comparison ran; an anchor that is not installed is skipped by name.
    ours = {name: next(r for r in sections[name]["rows"] if r["status"] == "ok") for name in ("torch_env", "memory", "rlhf", "fsdp")}
    assert ours["torch_env"]["name"] == "ppokit" and ours["torch_env"]["sps"] > 0
    assert ours["rlhf"]["side"] == "ppokit" and ours["rlhf"]["s_per_step_median"] > 0
    assert ours["memory"]["peak_mib"] > 0 and ours["memory"]["trainable_params"] > 0
    assert ours["fsdp"]["backend"] == "gloo" and ours["fsdp"]["world_size"] == 1 and ours["fsdp"]["updates"] == 2
    assert ours["fsdp"]["update_s_median"] > 0
    for name, anchor in (("rlhf", "trl"), ("torch_env", "rsl_rl")):
        theirs = [r for r in sections[name]["rows"] if r["status"] == "skipped"]
        assert all(r["reason"] == f"{anchor} not installed" for r in theirs), theirs
    atari = sections["atari"]["rows"]
    assert all(r["status"] == "ok" and r["sps"] > 0 or r["reason"].endswith("not installed") for r in atari), atari

    # The Markdown table: in the file and printed last, a row per section and a table per section that ran.
    table = (tmp_path / "gpu_check.md").read_text()
    assert proc.stdout.strip().endswith(table.strip())
    for s in report["sections"]:
        assert f"| {s['title']} | {s['status']}" in table
    assert "## RLHF PPO against TRL" in table and "| lora+gc | ppokit |" in table
    assert "===== fsdp (exit 0" in (tmp_path / "gpu_check.log").read_text()


def test_the_budget_skips_what_does_not_fit_and_the_timeout_stops_a_section(tmp_path):
    proc = _check(tmp_path / "none", "--dry-run", "--budget-s", "0")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert [(s["status"], s["reason"]) for s in _report(tmp_path / "none")["sections"]] == [("skipped", "over budget")] * 6

    proc = _check(tmp_path / "short", "--dry-run", "--sections", "fsdp", "--timeout", "2")
    assert proc.returncode == 1  # a failed section fails the check
    [fsdp] = _report(tmp_path / "short")["sections"]
    assert (fsdp["name"], fsdp["status"], fsdp["reason"]) == ("fsdp", "failed", "timed out after 2 s")
    assert fsdp["wall_s"] < 30  # the section's process group was killed, torchrun's too


def test_the_full_size_settings_parse_and_are_the_issue_s(tmp_path):
    """The GPU branch's own flags, which no dry run passes: each benchmark script's parser takes them."""
    code = """
import json, gpu_check, rlhf_gpu, rlhf_memory
rlhf = rlhf_gpu.parser().parse_args(gpu_check.rlhf_flags(False, 4))
memory = rlhf_memory.parser().parse_args(gpu_check.memory_flags(False, 4))
print(json.dumps({"rlhf": vars(rlhf) | {"precision_of": rlhf_gpu.precision_of(rlhf), "trl_python": None},
                  "memory": vars(memory)}))
"""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "benchmarks"), str(ROOT)])}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(proc.stdout)
    rlhf, memory = got["rlhf"], got["memory"]
    assert (rlhf["size"], rlhf["device"], rlhf["precision_of"], rlhf["variants"]) == (
        "qwen2-0.5b", "cuda", "bf16", ["base", "lora", "gc", "lora+gc"])
    assert 16 <= rlhf["batch"] <= 32 and rlhf["prompt_length"] == rlhf["response_length"] == 64 and 2 <= rlhf["steps"] <= 4
    assert memory["device"] == "cuda" and memory["updates"] == 2
    assert memory["options"].split(",")[0] == "separate" and "all_of_them" in memory["options"]


def test_without_cuda_and_without_dry_run_every_section_is_skipped(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    proc = _check(tmp_path, "--sections", "fsdp,rlhf")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert {(s["status"], s["reason"].split(" (")[0]) for s in _report(tmp_path)["sections"]} == {("skipped", "no CUDA")}


def test_an_unknown_section_is_refused_in_one_line(tmp_path):
    proc = _check(tmp_path, "--dry-run", "--sections", "rlhf,gpus")
    assert proc.returncode == 2 and "--sections: unknown gpus; choose from cuda_tests" in proc.stderr
    assert not (tmp_path / "gpu_check.json").exists()

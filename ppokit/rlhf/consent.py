"""What resuming an RLHF run from its directory alone would run, read or contact, and the consent it needs.

A run directory may come from anyone, and its ``config.yaml`` is theirs to write. Code it names
(a ``module:function`` reward, ``trust_remote_code: true``) would run; a data file it names (``data``,
``eval_data``: any path, ``~/.ssh/id_rsa`` included) would be read and its rows sent on, to the
policy's samples and to the reward sources; a reward server it names (``http(s)://...``) would be
sent every prompt and completion. None of them is used unless the user allows it: by naming it
again (``ppokit resume RUN --data FILE --reward SOURCE``; in Python ``prompts=``, ``rewards=``,
``data=``) or by trusting the directory (``--trust``, ``trust=True``).

Model directories and hub ids (``policy``, ``reference``, ``model``, reward-model directories) are
not on the list: loading one reads weights and a config as a model, and runs none of its code
without ``trust_remote_code``.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

from ppokit.errors import UntrustedCodeError
from ppokit.rlhf.rewards.remote import is_url
from ppokit.urls import redact_url

#: The data-file fields a resume reads, by the stage's config (eval_data: SFT and reward training).
DATA_FIELDS = ("data", "eval_data")


def saved_uses(data: Mapping[str, Any], named_again: Collection[str], reward_import: Any = None) -> list[str]:
    """What the recorded config ``data`` would make a resume run, read or contact, less the fields in
    ``named_again`` (given again by the user). ``reward_import``: ``spec -> module name or None``, the
    reward sources' own parser (PPO runs only)."""
    return _code_and_servers(data, named_again, reward_import) + [
        f"{field} file {data[field]!r} (would be read, and its rows used for training)"
        for field in _data_files(data, named_again)]


def _code_and_servers(data: Mapping[str, Any], named_again: Collection[str], reward_import: Any) -> list[str]:
    uses: list[str] = []
    if "rewards" not in named_again:
        for spec in data.get("rewards") or []:
            if is_url(spec):
                uses.append(f"reward server {redact_url(spec)} (would be sent every prompt and completion)")
                continue
            module = reward_import(spec) if reward_import is not None else None
            if module is not None and not str(spec).startswith("<python callable"):
                uses.append(f"reward {spec!r} (imports module {module!r} and calls it)")
    if data.get("trust_remote_code") is True and "trust_remote_code" not in named_again:
        uses.append("trust_remote_code: true (runs the Python code shipped with the models it loads)")
    return uses


def _data_files(data: Mapping[str, Any], named_again: Collection[str]) -> list[str]:
    """The data-file fields ``data`` names that were not named again."""
    return [field for field in DATA_FIELDS
            if isinstance(data.get(field), str) and data[field] and field not in named_again]


def refuse_without_consent(config_file: Path, uses: list[str], trust: bool, again: str) -> None:
    """Raise :class:`UntrustedCodeError` naming ``uses`` unless there are none or ``trust`` is set;
    ``again``: how to name them again in this context."""
    if uses and not trust:
        raise UntrustedCodeError(
            f"{config_file} names what resuming would run, read or contact: {'; '.join(uses)}. ppokit uses nothing "
            f"a saved run names unless you allow it: name it again ({again}) or, if you trust this run directory, "
            "pass --trust to ppokit resume (in Python: trust=True)")


def resume_flags(config: Any, reward_import: Any = None) -> str:
    """What ``ppokit resume RUN`` needs after it for this run (its ``config``), so that the command
    printed when a run is interrupted works as shown: nothing, the data files named again, or
    ``--trust`` when the run names code or a reward server (a server's URL may carry a token, which
    the terminal must not show)."""
    import shlex

    recorded = {name: getattr(config, name, None) for name in ("rewards", "trust_remote_code", *DATA_FIELDS)}
    if _code_and_servers(recorded, (), reward_import):
        return " --trust"
    return "".join(f" --{field.replace('_', '-')} {shlex.quote(str(recorded[field]))}"
                   for field in _data_files(recorded, ()))

"""URLs as ppokit shows them: with their credentials replaced by ``***``.

A reward server's URL may carry a secret (``https://user:pass@host/score``,
``https://host/score?token=...``). config.yaml keeps the real URL, since resuming calls the server
again; everything else ppokit prints or writes (warnings, errors, logs, tracker params, model cards,
``ppokit info``) shows it through :func:`redact_url`. The rule is the simplest safe one: the whole
userinfo part and every query value are hidden, whatever their names, since a name cannot tell a
secret from a setting reliably.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import SplitResult, urlsplit, urlunsplit

#: What stands in for a hidden part.
HIDDEN = "***"

#: ``scheme://rest`` in free text, up to the first space or quote (what a message around a URL uses).
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://[^\s'\"<>`]+")


def _hide_query(query: str) -> str:
    # Split by hand rather than parse_qsl + urlencode: the names keep their exact spelling, and a
    # query that is not name=value pairs still loses everything after each '='.
    return "&".join(f"{part.partition('=')[0]}={HIDDEN}" if "=" in part else part for part in query.split("&"))


def url_scheme(spec: object) -> str | None:
    """The scheme, lower-cased, of a string that looks like a URL (``scheme://...``); else None."""
    if not isinstance(spec, str) or "://" not in spec:
        return None
    scheme = spec.partition("://")[0]
    return scheme.lower() if scheme and scheme[0].isalpha() and all(c.isalnum() or c in "+.-" for c in scheme) else None


def redact_url(url: str) -> str:
    """``url`` with its userinfo (``user:pass@``) and every query value replaced by ``***``.

    Not a URL (no ``scheme://``): returned unchanged, so it is safe to call on any reward spec.
    """
    if "://" not in url:
        return url
    try:
        parts = urlsplit(url)
    except ValueError:  # an unparseable URL: hide everything after the host's start, to be safe
        scheme, _, _ = url.partition("://")
        return f"{scheme}://{HIDDEN}"
    netloc = parts.netloc
    if "@" in netloc:
        netloc = f"{HIDDEN}@{netloc.rpartition('@')[2]}"
    query = _hide_query(parts.query) if parts.query else ""
    return urlunsplit(SplitResult(parts.scheme, netloc, parts.path, query, parts.fragment))


def redact_text(text: str) -> str:
    """``text`` (a message, a log line) with each URL in it redacted."""
    if "://" not in text:
        return text
    return _URL_IN_TEXT.sub(lambda m: redact_url(m.group(0)), text)


def redact_values(value: Any) -> Any:
    """A copy of ``value`` (a config as a mapping, its lists, its strings) with every URL redacted."""
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, Mapping):
        return {k: redact_values(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(redact_values(v) for v in value)
    return value

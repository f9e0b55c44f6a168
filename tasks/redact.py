"""Redact secrets in task arguments and cap oversize text, before anything is stored or mailed."""
from __future__ import annotations

import ast
import functools
import re
from typing import Any
from urllib.parse import urlsplit, urlunsplit

REDACTED = "'***'"
SECRET_WORDS = ("password", "passwd", "pwd", "secret", "token", "api_key", "apikey", "access_key",
                "private_key", "credential", "authorization", "auth", "cookie", "session_key", "signature")
_SECRET_KEY = re.compile(r"(?i)(%s)" % "|".join(re.escape(w) for w in SECRET_WORDS))
# 'password': 'x'   "api_key": "x"   password='x'   token=abc   in a repr, even a truncated one.
# (?<![\w-]): a key starts where a run of word characters starts. Without it the regex also
# tried every position inside every run (ids, hex strings), each a 15-word backtracking search:
# ~250 us per repr instead of ~50. A match can only start at a run's start anyway (the run's
# tail matches only if the whole run does), and the key is put back verbatim, so the result
# is the same.
_PAIR = re.compile(
    r"""(?<![\w-])(?P<key>['"]?[\w-]*(?:%s)[\w-]*['"]?\s*(?::|=)\s*)"""
    r"""(?P<value>'(?:[^'\\]|\\.)*(?:'|$)|"(?:[^"\\]|\\.)*(?:"|$)|b'(?:[^'\\]|\\.)*(?:'|$)|[^,)}\]\s]+)"""
    % "|".join(re.escape(w) for w in SECRET_WORDS),
    re.IGNORECASE,
)


def mentions_secret(text: str) -> bool:
    """Whether a secret word occurs in ``text``, ignoring case (``_SECRET_KEY.search``, faster).

    Every task-sent/received event passes here twice; the case-insensitive regex costs ~0.2 us
    per character, a lower-cased substring scan a tenth of that. For ASCII text the two agree
    exactly; other text keeps the regex (its Unicode case folding, e.g. the Kelvin sign, differs).
    """
    if not text.isascii():
        return _SECRET_KEY.search(text) is not None
    lowered = text.lower()
    for word in SECRET_WORDS:
        if word in lowered:
            return True
    return False


def is_secret_key(key: Any) -> bool:
    return isinstance(key, str) and mentions_secret(key)


def redact_value(value: Any) -> Any:
    """A copy of a Python value with every secret-named dict key's value replaced by '***'."""
    if isinstance(value, dict):
        return {k: ("***" if is_secret_key(k) else redact_value(v)) for k, v in value.items()}
    if isinstance(value, list):
        return [redact_value(v) for v in value]
    if isinstance(value, tuple):
        return tuple(redact_value(v) for v in value)
    return value


def redact_repr(text: str | None) -> str | None:
    """Redact a Python repr of args/kwargs as celery puts it in events.

    A complete literal is parsed and re-printed with secret values replaced; a truncated or
    non-literal repr (``<object at 0x..>``) is redacted by pattern, which also catches
    ``password=...`` inside strings.
    """
    if not text:
        return text
    if not mentions_secret(text):
        return text
    if len(text) <= _REMEMBER_CHARS:
        return _redact_remembered(text)
    return _redact(text)


# task-sent and task-received carry the same args/kwargs reprs, often thousands of events
# apart: remembering recent answers halves the redaction work (parsing and re-printing a repr
# that holds a secret costs ~100 us). Only texts that mention a secret are remembered (the
# others come back unchanged, after a scan that costs little), and only short ones: at most
# 4,096 texts of 4,096 characters, a few MB in practice.
_REMEMBER_CHARS = 4096


@functools.lru_cache(maxsize=4096)
def _redact_remembered(text: str) -> str:
    return _redact(text)


def _redact(text: str) -> str:
    """``text`` redacted; the caller has seen that it mentions a secret."""
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return _PAIR.sub(lambda m: m.group("key") + REDACTED, text)
    redacted = repr(redact_value(value))
    return _PAIR.sub(lambda m: m.group("key") + REDACTED, redacted)


def truncate(text: str | None, max_bytes: int) -> tuple[str | None, bool]:
    """Cut text to at most ``max_bytes`` UTF-8 bytes; (text, was_cut)."""
    if text is None or max_bytes <= 0 or len(text) * 4 <= max_bytes:
        return text, False
    data = text.encode("utf-8", "surrogatepass")
    if len(data) <= max_bytes:
        return text, False
    marker = f"... [truncated {len(data)} bytes]"
    cut = data[: max(max_bytes - len(marker), 0)].decode("utf-8", "ignore")
    return cut + marker, True

def mask_url(url: str) -> str:
    """Replace the password in a URL with ``***``; leave everything else as written."""
    if not url or "@" not in url:
        return url
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    userinfo = netloc[0].split(":", 1)[0]
    return urlunsplit(parts._replace(netloc=f"{userinfo}:***@{netloc[1]}"))

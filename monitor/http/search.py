"""The tasks page's search box: Flower's qualifiers (name: state: args: kwargs: result:) plus free text.

``name:add* state:FAILURE args:42 "free text"`` -> a RunFilter's name and states, field terms, text.
Quotes group words (``args:"a b"``); anything without a known qualifier is free text.
"""
from __future__ import annotations

import shlex
from dataclasses import dataclass, field

QUALIFIERS = ("name", "state", "worker", "queue", "args", "kwargs", "result", "exception")
FIELD_TERMS = ("args", "kwargs", "result", "exception")


class SearchError(ValueError):
    """The search box text cannot be read (an unclosed quote, an empty qualifier)."""


@dataclass(frozen=True)
class Search:
    name: str | None = None
    states: tuple[str, ...] = ()
    worker: str | None = None
    queue: str | None = None
    terms: dict[str, str] = field(default_factory=dict)
    text: str | None = None


def parse_search(query: str) -> Search:
    try:
        words = shlex.split(query)
    except ValueError as exc:
        raise SearchError(f"search: {exc} (close the quote)") from None
    found: dict[str, str] = {}
    states: list[str] = []
    free: list[str] = []
    for word in words:
        key, sep, value = word.partition(":")
        key = key.lower()
        if not sep or key not in QUALIFIERS:
            free.append(word)
            continue
        if not value:
            raise SearchError(f"search: {key}: needs a value, e.g. {key}:something")
        if key == "state":
            states.extend(s.strip().upper() for s in value.split(",") if s.strip())
        else:
            found[key] = value
    return Search(name=found.get("name"), states=tuple(states), worker=found.get("worker"),
                  queue=found.get("queue"), terms={k: found[k] for k in FIELD_TERMS if k in found},
                  text=" ".join(free) or None)

"""How an error reads in a one-line message or log line (every layer imports this one)."""
from __future__ import annotations


def first_line(exc: BaseException) -> str:
    """The first non-blank line of ``exc``'s message, else its type's name (an empty message is common).

    For a SQLAlchemy error it is the driver's message: SQLAlchemy's own adds the SQL and a link.
    """
    orig = getattr(exc, "orig", None)
    if isinstance(orig, BaseException):
        exc = orig
    for line in str(exc).splitlines():
        if line.strip():
            return line.strip()
    return type(exc).__name__

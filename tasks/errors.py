"""The error a job raises for arguments it cannot use: no Celery here, so commands can raise it too."""
from __future__ import annotations


class BadInput(ValueError):
    """A job was given arguments it cannot use (unknown bill, negative days); the message says which."""

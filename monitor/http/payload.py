"""What every JSON answer goes through: times in the configured zone, URLs with a password masked."""
from __future__ import annotations

import re
from datetime import date, datetime, tzinfo
from decimal import Decimal
from typing import Any

from tasks.redact import mask_url

# scheme://user:password@host inside any text (a result, an exception, a worker's broker URL)
_URL_WITH_PASSWORD = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s/@'\"]*:[^\s/@'\"]*@[^\s'\",)\]}]+")


def mask_urls(text: str) -> str:
    if "@" not in text or "://" not in text:
        return text
    return _URL_WITH_PASSWORD.sub(lambda m: mask_url(m.group(0)), text)


def scrub(value: Any, tz: tzinfo) -> Any:
    """``value`` as JSON types: times ISO 8601 in ``tz``, every string with its URLs' passwords masked."""
    if isinstance(value, str):
        return mask_urls(value)
    if isinstance(value, dict):
        return {str(k): scrub(v, tz) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [scrub(v, tz) for v in value]
    if isinstance(value, datetime):
        return value.astimezone(tz).isoformat()
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, bytes):
        return mask_urls(value.decode("utf-8", "replace"))
    return value


def json_response(value: Any, tz: tzinfo, status: int = 200):
    """A JSON answer of ``value`` after scrub(), serialised by orjson (no second pass through pydantic)."""
    import orjson
    from fastapi.responses import Response

    return Response(orjson.dumps(scrub(value, tz)), status_code=status, media_type="application/json")

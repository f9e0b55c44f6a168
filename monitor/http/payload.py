"""What every JSON answer goes through: times in the configured zone, URLs with a password masked."""
from __future__ import annotations

import re
from datetime import tzinfo
from typing import Any

import orjson
from fastapi.responses import Response

from monitor.jsonable import jsonable
from tasks.redact import mask_url

# scheme://user:password@host inside any text (a result, an exception, a worker's broker URL)
_URL_WITH_PASSWORD = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s/@'\"]*:[^\s/@'\"]*@[^\s'\",)\]}]+")


def mask_urls(text: str) -> str:
    if "@" not in text or "://" not in text:
        return text
    return _URL_WITH_PASSWORD.sub(lambda m: mask_url(m.group(0)), text)


def scrub(value: Any, tz: tzinfo, native_times: bool = False) -> Any:
    """``value`` as JSON types (monitor.jsonable, as the CLI's --json), every string with its URLs'
    passwords masked; ``native_times``: times left as datetimes in ``tz``, for orjson."""
    return jsonable(value, tz, text=mask_urls, native_times=native_times)


def json_response(value: Any, tz: tzinfo, status: int = 200) -> Response:
    """A JSON answer of ``value`` after scrub(), serialised by orjson (no second pass through pydantic:
    the route's response_model still gives the OpenAPI document its schema)."""
    return Response(orjson.dumps(scrub(value, tz, native_times=True)), status_code=status, media_type="application/json")

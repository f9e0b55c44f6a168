"""/api/v1/alerts: the alert history with delivery status, and a test e-mail through the alert path."""
from __future__ import annotations

import smtplib
from datetime import datetime
from typing import Annotated, Any

from fastapi import Body, Depends, Query, Request
from pydantic import BaseModel, Field, StringConstraints

from monitor.http.audit import audited
from monitor.http.auth import allow
from monitor.http.params import resolve, since_query
from monitor.http.payload import json_response
from monitor.http.problems import api_router, bad_request, responses, unavailable
from storage.alerts import list_alerts
from tasks.alerts import send_test
from tasks.mail import MailError

router = api_router("alerts")
# One plain ASCII address (a dot-atom @ a host name), no display name: nothing a header could be injected through.
_ATOM = r"[A-Za-z0-9!#$%&*+/=?^_`{|}~-]+"
_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?"
Address = Annotated[str, StringConstraints(pattern=rf"^{_ATOM}(\.{_ATOM})*@{_LABEL}(\.{_LABEL})*$", max_length=254)]


class Alert(BaseModel):
    id: int
    group_key: str
    rule: str
    kind: str
    subject: str
    recipients: str
    task_name: str | None
    exception_type: str | None
    target: str | None
    task_id: str | None
    message: str | None
    detail: dict[str, Any]
    occurrences: int
    total_count: int
    first_seen: datetime
    last_seen: datetime
    status: str
    attempts: int
    last_error: str | None
    next_attempt_at: datetime | None
    created_at: datetime
    sent_at: datetime | None
    updated_at: datetime


@router.get("/alerts", response_model=list[Alert], dependencies=[Depends(allow("viewer"))],
            responses=responses(400, 401, 403, 503), summary="Alerts, newest first, with delivery status")
def alerts(request: Request, since: str | None = since_query("Recorded at or after."),
           limit: int = Query(100, ge=1, le=1000)):
    since_at = resolve(request, "since", since)
    with request.app.state.engine.connect() as conn:
        rows = list_alerts(conn, since=since_at, limit=limit)
    return json_response(rows, request.app.state.settings.tz)


class TestAlert(BaseModel):
    to: list[Address] = Field([], max_length=20, description="Recipients; default: the alert_recipients setting.")


class TestSent(BaseModel):
    to: list[str]
    message_id: str


@router.post("/alerts/test", response_model=TestSent, dependencies=[Depends(allow("operator"))],
             responses=responses(400, 401, 403, 422, 503),
             summary="Send a test alert e-mail through the alert path (render + SMTP)")
def test_alert(request: Request, body: TestAlert = Body(default_factory=TestAlert)):
    settings = request.app.state.settings
    to = list(body.to) or list(settings.alert_recipients)
    if not to:
        raise bad_request("no recipient: give `to` or set alert_recipients")
    with audited(request, "alert.test", ", ".join(to)) as entry:
        try:
            message_id = send_test(settings, to)
        except MailError as exc:
            if isinstance(exc.__cause__, (smtplib.SMTPRecipientsRefused, smtplib.SMTPSenderRefused)):
                raise bad_request(str(exc)) from None  # the server is up and says no to these addresses
            raise unavailable(str(exc)) from None
        entry.detail = {"message_id": message_id}
    return {"to": to, "message_id": message_id}

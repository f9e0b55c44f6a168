"""Notification e-mail: recorded, sent once per key, retried after a failure."""
import pytest
from sqlalchemy import select

from tasks.settings import Settings
from storage.schema import notifications
from tasks.mail import MailError
from tasks.notifications import deliver
from tasks.policies import BadInput


def rows(engine):
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(select(notifications).order_by(notifications.c.id)).mappings()]


def test_a_notification_is_recorded_and_sent(engine, smtp_server):
    settings = Settings(smtp_host="127.0.0.1", smtp_port=smtp_server.port, smtp_from="taskmon@example.com")
    outcome = deliver(engine, settings, "user@example.com", "Test", "Hello")
    assert outcome["sent"] is True
    (row,) = rows(engine)
    assert (row["recipient"], row["subject"], row["body"], row["status"]) == ("user@example.com", "Test", "Hello", "sent")
    assert row["sent_at"] is not None and row["read_at"] is None
    msg = smtp_server.messages[0]
    assert msg["to"] == ["user@example.com"] and msg["from"] == "taskmon@example.com"
    assert msg["message"].get_content().strip() == "Hello"


def test_the_same_key_is_sent_once(engine, smtp_server):
    settings = Settings(smtp_host="127.0.0.1", smtp_port=smtp_server.port)
    first = deliver(engine, settings, "user@example.com", "Once", "x", key="task:abc")
    second = deliver(engine, settings, "user@example.com", "Once", "x", key="task:abc")
    assert first["sent"] and not second["sent"] and first["id"] == second["id"]
    assert len(rows(engine)) == 1 and len(smtp_server.messages) == 1


def test_without_a_key_every_call_is_a_new_notification(engine, smtp_server):
    settings = Settings(smtp_host="127.0.0.1", smtp_port=smtp_server.port)
    deliver(engine, settings, "user@example.com", "A", "x")
    deliver(engine, settings, "user@example.com", "A", "x")
    assert len(rows(engine)) == 2 and len(smtp_server.messages) == 2


def test_a_failed_send_is_recorded_and_the_retry_sends_it(engine, smtp_server):
    with pytest.raises(MailError, match="cannot send mail via 127.0.0.1:1"):
        deliver(engine, Settings(smtp_host="127.0.0.1", smtp_port=1), "user@example.com", "Retry", "x", key="k1")
    (failed,) = rows(engine)
    assert failed["status"] == "failed" and "cannot send mail" in failed["error"]
    assert deliver(engine, Settings(smtp_host="127.0.0.1", smtp_port=smtp_server.port), "user@example.com", "Retry", "x",
                   key="k1")["sent"]
    (sent,) = rows(engine)
    assert sent["status"] == "sent" and sent["error"] is None and len(smtp_server.messages) == 1


def test_a_bad_address_is_refused_before_anything_is_recorded(engine):
    with pytest.raises(BadInput, match="not an e-mail address"):
        deliver(engine, Settings(), "nobody", "x", "y")
    assert rows(engine) == []

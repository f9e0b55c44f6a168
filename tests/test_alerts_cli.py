"""`taskmon alerts` lists the history with delivery status; `taskmon alerts test` mails through the alert path."""
import json
from datetime import datetime, timedelta, timezone

from click.testing import CliRunner

from cli import cli
from monitor.redis_server import free_port
from storage import alerts as store
from storage.db import make_engine, upgrade

NOW = datetime.now(timezone.utc).replace(microsecond=0)


def alert(kind, created, status, **kw):
    return {"group_key": "failed:billing.charge:ValueError", "rule": "failed", "kind": kind,
            "subject": f"[taskmon] {kind}: billing.charge failed: ValueError", "recipients": "ops@example.com",
            "task_name": "billing.charge", "exception_type": "ValueError", "task_id": "t1", "occurrences": 1,
            "total_count": 1, "first_seen": created, "last_seen": created, "status": status, "attempts": 1,
            "created_at": created, "updated_at": created, **kw}


def test_alerts_lists_history_newest_first_with_delivery_status_and_since(sqlite_url):
    engine = make_engine(sqlite_url)
    upgrade(engine)
    with engine.begin() as conn:
        store.insert_alert(conn, alert("fire", NOW - timedelta(hours=3), "sent", sent_at=NOW - timedelta(hours=3)))
        store.insert_alert(conn, alert("digest", NOW - timedelta(minutes=5), "failed",
                                       last_error="cannot send mail via localhost:25 (none): Connection refused"))
    runner = CliRunner()
    out = runner.invoke(cli, ["alerts", "--db", sqlite_url, "--timezone", "Asia/Shanghai"])
    assert out.exit_code == 0, out.output
    lines = out.output.splitlines()
    assert lines[0].split() == ["CREATED", "ID", "KIND", "RULE", "STATUS", "TRIES", "SUBJECT", "ERROR"]
    assert "digest" in lines[1] and "failed" in lines[1] and "Connection refused" in lines[1]
    assert "fire" in lines[2] and "sent" in lines[2]
    out = runner.invoke(cli, ["alerts", "--db", sqlite_url, "--since", "1h", "--json"])
    assert out.exit_code == 0, out.output
    rows = json.loads(out.output)
    assert [(r["kind"], r["status"]) for r in rows] == [("digest", "failed")]
    out = runner.invoke(cli, ["alerts", "--db", sqlite_url, "--since", "yesterday-ish"])
    assert out.exit_code == 2 and "is not a time" in out.output


def test_alerts_test_sends_one_email_and_reports_success(smtp_server, monkeypatch):
    monkeypatch.setenv("TASKMON_SMTP_HOST", "127.0.0.1")
    monkeypatch.setenv("TASKMON_SMTP_PORT", str(smtp_server.port))
    out = CliRunner().invoke(cli, ["alerts", "test", "--to", "me@example.com"])
    assert out.exit_code == 0, out.output
    assert out.output == f"sent a test alert to me@example.com via 127.0.0.1:{smtp_server.port} (none)\n"
    (mail,) = smtp_server.messages
    assert mail["to"] == ["me@example.com"] and "test alert" in mail["message"].get_body(("plain",)).get_content()


def test_alerts_test_reports_the_smtp_error_in_one_line_and_exits_1(monkeypatch):
    port = free_port()
    monkeypatch.setenv("TASKMON_SMTP_HOST", "127.0.0.1")
    monkeypatch.setenv("TASKMON_SMTP_PORT", str(port))
    out = CliRunner().invoke(cli, ["alerts", "test", "--to", "me@example.com"])
    assert out.exit_code == 1
    assert out.output.startswith(f"Error: cannot send mail via 127.0.0.1:{port} (none): ")
    assert len(out.output.strip().splitlines()) == 1
    out = CliRunner().invoke(cli, ["alerts", "test"], env={"TASKMON_ALERT_RECIPIENTS": ""})
    assert out.exit_code == 1 and "no recipient" in out.output

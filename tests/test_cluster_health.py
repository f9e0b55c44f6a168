"""/healthz and /metrics say which daemon leads the cluster: `taskmon serve`'s from daemon_status, each
daemon's own port from what it knows, two daemons on one PostgreSQL history."""
import urllib.request
from datetime import datetime, timezone

from prometheus_client.parser import text_string_to_metric_families

from monitor.redis_server import free_port
from storage.db import make_engine, upgrade
from storage.health import write_status
from tests.api_fixtures import role_tokens, start_api  # noqa: F401  (fixture)
from tests.cluster_helpers import wait_until
from tests.daemon_helpers import running_daemon


def samples(text: str, name: str) -> dict:
    return {tuple(sorted(s.labels.items())): s.value for f in text_string_to_metric_families(text)
            for s in f.samples if s.name == name}


def own_port(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        return response.read().decode()


def test_healthz_and_metrics_name_the_leader_before_and_after_it_hands_over(redis_url, pg_url, start_api):
    engine = make_engine(pg_url)
    upgrade(engine)
    engine.dispose()
    tokens = role_tokens(pg_url)
    ports = free_port(), free_port()
    common = {"detect_interval": 0, "metrics_host": "127.0.0.1"}
    with running_daemon(redis_url, pg_url, metrics_port=ports[0], **common) as first:
        wait_until(first.leadership.is_leader, "the first daemon leads", timeout=10)
        with running_daemon(redis_url, pg_url, metrics_port=ports[1], **common) as second:
            a, b = first.daemon_id, second.daemon_id
            server = start_api(pg_url, broker_url=redis_url)
            with server.client() as anonymous, server.client(tokens["viewer"]) as viewer:
                wait_until(lambda: anonymous.get("/healthz", params={"daemon": b}).status_code == 200,
                           "the second's heartbeat")
                assert anonymous.get("/healthz").json()["leader"] == a  # the newest heartbeat's daemon, either
                health = anonymous.get("/healthz", params={"daemon": b})
                assert health.status_code == 200
                assert health.json() | {"heartbeat_at": None} == {
                    "ok": True, "reason": health.json()["reason"], "daemon_id": b, "heartbeat_at": None,
                    "role": "follower", "leader": a}
                assert health.json()["reason"].endswith(f"cluster leader {a}")
                of_first = anonymous.get("/healthz", params={"daemon": a}).json()
                assert (of_first["ok"], of_first["role"], of_first["leader"]) == (True, "leader", a)
                unknown = anonymous.get("/healthz", params={"daemon": "nosuch-9"})
                assert unknown.status_code == 404 and "no daemon nosuch-9" in unknown.json()["detail"]

                text = viewer.get("/metrics").text
                assert samples(text, "taskmon_daemon_leader") == {(("daemon", a),): 1, (("daemon", b),): 0}
                assert samples(text, "taskmon_cluster_has_leader") == {(): 1}
                assert set(samples(text, "taskmon_heartbeat_age_seconds")) == {(("daemon", a),), (("daemon", b),)}
                # Each daemon's own port: unlabelled (the scrape target tells them apart), from what it knows.
                assert [samples(own_port(p), "taskmon_daemon_leader") for p in ports] == [{(): 1}, {(): 0}]
                assert [samples(own_port(p), "taskmon_cluster_has_leader") for p in ports] == [{(): 1}, {(): 1}]

                first.shutdown()  # stops cleanly: its session ends, the second takes the lock
                wait_until(lambda: anonymous.get("/healthz").json()["leader"] == b, "the second leads", timeout=15)
                text = viewer.get("/metrics").text
                assert samples(text, "taskmon_daemon_leader") == {(("daemon", b),): 1}  # a stopped daemon has none
                assert samples(own_port(ports[1]), "taskmon_daemon_leader") == {(): 1}


def test_healthz_fails_and_metrics_show_no_leader_when_no_live_daemon_leads(pg_url, redis_url, start_api):
    engine = make_engine(pg_url)
    upgrade(engine)
    tokens = role_tokens(pg_url)
    now = datetime.now(timezone.utc)
    with engine.begin() as conn:  # a follower whose leader died a moment ago: the next has not taken over yet
        write_status(conn, daemon_id="h-1", hostname="h", pid=1, sources="stream", started_at=now, heartbeat_at=now,
                     counters={}, source_states={}, writer_lag=0.0, role="follower")
        write_status(conn, daemon_id="h-0", hostname="h", pid=2, sources="stream", started_at=now,
                     heartbeat_at=datetime(2026, 1, 1, tzinfo=timezone.utc), counters={}, source_states={},
                     writer_lag=0.0, role="leader")
    engine.dispose()
    server = start_api(pg_url, broker_url=redis_url)
    with server.client() as anonymous, server.client(tokens["viewer"]) as viewer:
        health = anonymous.get("/healthz", params={"daemon": "h-1"})
        assert health.status_code == 503
        assert (health.json()["role"], health.json()["leader"]) == ("follower", None)
        assert "no daemon leads the cluster" in health.json()["reason"]
        text = viewer.get("/metrics").text
    assert samples(text, "taskmon_daemon_leader") == {(("daemon", "h-0"),): 0, (("daemon", "h-1"),): 0}
    assert samples(text, "taskmon_cluster_has_leader") == {(): 0}

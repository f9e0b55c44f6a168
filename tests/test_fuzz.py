"""Malformed input is counted by reason and skipped; valid events around it are stored."""
import base64
import random
import time

import orjson
import redis
from sqlalchemy import select

from monitor.sources import encode_kombu_message
from storage.schema import task_runs
from tests.daemon_helpers import running_daemon, wait_for_runs
from tests.eventgen import lifecycle, publish

CHANNEL = "/0.celeryev/task.multi"


def envelope(raw: bytes, **overrides) -> bytes:
    env = orjson.loads(encode_kombu_message(raw, "task.multi"))
    env.update(overrides)
    return orjson.dumps(env)


def good_event(**fields):
    return {"type": "task-succeeded", "uuid": "u-" + str(random.random()), "timestamp": 1795000000.0, **fields}


# (reason it must be counted under, message bytes) -- each message is exactly one count.
CASES = [
    ("not_json", lambda: b"garbage{" + random.randbytes(8).hex().encode()),
    ("invalid_utf8", lambda: b'{"body": "\xff\xfe\xfd"}'),
    ("not_dict", lambda: b"[1, 2, 3]"),
    ("bad_envelope", lambda: b'{"properties": {}}'),
    ("bad_encoding", lambda: envelope(b"", body="!!!not base64!!!")),
    ("not_json", lambda: envelope(b"{not json")),
    ("not_dict", lambda: envelope(b"42")),
    ("not_dict", lambda: envelope(b"[1]")),
    ("missing_type", lambda: envelope(orjson.dumps({"uuid": "x", "timestamp": 1.0}))),
    ("missing_uuid", lambda: envelope(orjson.dumps({"type": "task-succeeded", "timestamp": 1.0}))),
    ("bad_field_type", lambda: envelope(orjson.dumps(good_event(timestamp="yesterday")))),
    ("bad_field_type", lambda: envelope(orjson.dumps(good_event(retries="3")))),
    ("bad_field_type", lambda: envelope(orjson.dumps(good_event(runtime=[1])))),
    ("bad_field_type", lambda: envelope(orjson.dumps(good_event(eta="not a date")))),
    ("bad_field_type", lambda: envelope(orjson.dumps(good_event(timestamp=1e300)))),
    ("unknown_type", lambda: envelope(orjson.dumps(good_event(type="task-exploded")))),
    ("unsupported_content_type", lambda: envelope(b"\x80\x04K\x01.", **{"content-type": "application/x-python-serialize"})),
    ("missing_hostname", lambda: envelope(orjson.dumps({"type": "worker-heartbeat", "timestamp": 1.0}))),
]


def test_ten_thousand_malformed_messages_are_counted_and_skipped(fresh_redis, sqlite_url):
    rng = random.Random(42)
    client = redis.Redis(port=fresh_redis.port)
    valid_ids = []
    expected: dict[str, int] = {}
    with running_daemon(fresh_redis.url, sqlite_url) as daemon:
        pipe = client.pipeline(transaction=False)
        for i in range(10_200):
            reason, make = CASES[i % len(CASES)]
            expected[reason] = expected.get(reason, 0) + 1
            pipe.publish(CHANNEL, make())
            if i % 100 == 0:  # valid tasks in between, one with a 3 MB argument and NUL bytes
                events = lifecycle(args="(" + "x" * 3_000_000 + ")" if i == 5000 else "(1, '\x00')")
                valid_ids.append(events[0]["uuid"])
                pipe.publish(CHANNEL, encode_kombu_message(orjson.dumps(events), "task.multi"))
            if i % 500 == 0:
                pipe.execute()
        # Random byte flips of valid messages: whatever they decode to, nothing may crash.
        for _ in range(500):
            data = bytearray(encode_kombu_message(orjson.dumps(lifecycle()), "task.multi"))
            for _ in range(3):
                data[rng.randrange(len(data))] = rng.randrange(256)
            pipe.publish(CHANNEL, bytes(data))
        pipe.execute()
        after = lifecycle()
        publish(client, after)
        valid_ids.append(after[0]["uuid"])
        rows = wait_for_runs(daemon.engine, valid_ids, {"SUCCESS"}, timeout=60)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and daemon.counters().get("messages_received", 0) < 10_200 + 500 + len(valid_ids):
            time.sleep(0.1)
        counters = daemon.counters()
        assert all(t.is_alive() for t in [daemon.writer, *daemon.sources])

    assert len(rows) == len(valid_ids) and {r["state"] for r in rows.values()} == {"SUCCESS"}
    big = [r for r in rows.values() if r["truncated"]]
    assert len(big) == 1 and len(big[0]["args"]) < 20_000 and "truncated" in big[0]["args"]
    assert counters["messages_received"] == 10_200 + 500 + len(valid_ids)
    malformed = {k.split(".", 1)[1]: v for k, v in counters.items() if k.startswith("malformed.")}
    for reason, count in expected.items():
        assert malformed.get(reason, 0) >= count, (reason, malformed)
    # The byte flips are the only other source of malformed counts.
    assert sum(expected.values()) <= sum(malformed.values()) <= sum(expected.values()) + 500 * 4
    with daemon.engine.connect() as conn:
        stored_args = conn.execute(select(task_runs.c.args)).scalars().all()
    assert stored_args and not any("\x00" in a for a in stored_args if a)  # PostgreSQL could not store NUL

"""Fixtures that start and connect to real services: Redis, PostgreSQL, RabbitMQ, Celery, SMTP."""
from __future__ import annotations

import socket
import threading
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from monitor.redis_server import RedisServer, RedisUnavailable, free_port
from tests.services import AMQP_URL, IN_CI, POSTGRES_URL, Beat, Worker, missing, rabbitmqctl, unique


# -- Redis --------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def redis_server():
    """One redis-server for the whole run, on a free port, started by the tests."""
    try:
        server = RedisServer().start()
    except RedisUnavailable as exc:
        pytest.fail(str(exc), pytrace=False)
    yield server
    server.close()


@pytest.fixture
def fresh_redis():
    """A redis-server of the test's own, which the test may kill and restart."""
    server = RedisServer().start()
    yield server
    server.close()


@pytest.fixture
def redis_url(redis_server):
    """A database number of the session server, flushed before the test."""
    import redis

    client = redis.Redis(port=redis_server.port)
    client.flushall()
    client.close()
    return redis_server.url


# -- SQL databases ------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def pg_server_url():
    """A PostgreSQL database created for this test run and dropped after it."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        missing("postgres", "psycopg is not installed")
    admin_url = make_url(POSTGRES_URL)
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text("select 1"))
    except Exception as exc:  # any driver error means: not reachable
        admin.dispose()
        missing("postgres", f"{admin_url.render_as_string(hide_password=True)}: {str(exc).splitlines()[0]}")
    name = unique("taskmon_test")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    yield admin_url.set(database=name)
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture
def pg_url(pg_server_url):
    """An empty schema of its own in the run's database; the URL puts it first on search_path."""
    schema = unique("s")
    engine = create_engine(pg_server_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    url = pg_server_url.update_query_dict({"options": f"-csearch_path={schema}"})
    yield url.render_as_string(hide_password=False)
    with engine.connect() as conn:
        conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
    engine.dispose()


@pytest.fixture(scope="session")
def pg_migration(pg_server_url):
    """The statements a real upgrade to head ran in a scratch schema of the run's database, for the
    ``engine`` fixture to replay in each test's schema: the same DDL without Alembic's per-upgrade cost.

    The scratch schema is dropped at once: pg_trgm, which the upgrade creates in the first schema of the
    search path, must be created again in each test's schema, as a real upgrade would."""
    from sqlalchemy import event

    from storage.db import make_engine, upgrade

    schema = unique("migration")
    admin = create_engine(pg_server_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    eng = make_engine(pg_server_url.update_query_dict({"options": f"-csearch_path={schema}"}))
    statements = []

    def record(conn, cursor, statement, parameters, context, executemany):
        if not statement.lstrip().upper().startswith(("SELECT", "SHOW")):  # reads change nothing
            statements.append((statement, parameters, executemany))

    event.listen(eng, "before_cursor_execute", record)
    upgrade(eng)
    eng.dispose()
    with admin.connect() as conn:
        conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
    admin.dispose()
    return statements


def replay(eng, statements) -> None:
    """Run recorded statements in one transaction, straight through the driver."""
    with eng.begin() as conn:
        with conn.connection.dbapi_connection.cursor() as cursor:
            for statement, parameters, many in statements:
                if many:
                    cursor.executemany(statement, parameters)
                else:
                    cursor.execute(statement, parameters or None)


@pytest.fixture
def sqlite_url(tmp_path):
    return f"sqlite:///{tmp_path / 'taskmon.db'}"


@pytest.fixture(scope="session")
def migrated_sqlite(tmp_path_factory) -> Path:
    """A SQLite history migrated to head once per run, for tests to copy rather than migrate again."""
    from storage.db import make_engine, upgrade

    path = tmp_path_factory.mktemp("template") / "taskmon.db"
    eng = make_engine(f"sqlite:///{path}")
    upgrade(eng)
    eng.dispose()
    return path


def copy_history(template: Path, url: str) -> None:
    """Copy a SQLite history to the file of ``url`` with SQLite's backup API (consistent even in WAL mode)."""
    import sqlite3

    src = sqlite3.connect(f"file:{template}?mode=ro", uri=True)
    dst = sqlite3.connect(make_url(url).database)
    with dst:
        src.backup(dst)
    dst.close()
    src.close()


@pytest.fixture
def sqlite_store(sqlite_url, migrated_sqlite):
    """The URL of an upgraded history store in a SQLite file (commands other than run never create one)."""
    copy_history(migrated_sqlite, sqlite_url)
    return sqlite_url


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request):
    """The same test on SQLite and on PostgreSQL, each with an empty database."""
    return request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url")


@pytest.fixture
def engine(request, db_url):
    """An upgraded history store on each database: SQLite's copied from the run's migrated file,
    PostgreSQL's made by the statements of the run's one real upgrade."""
    from storage.db import make_engine

    eng = make_engine(db_url)
    if db_url.startswith("sqlite"):
        copy_history(request.getfixturevalue("migrated_sqlite"), db_url)
    else:
        replay(eng, request.getfixturevalue("pg_migration"))
    yield eng
    eng.dispose()


# -- RabbitMQ -----------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def amqp_url():
    """A RabbitMQ virtual host of this run's own (via rabbitmqctl), else the configured URL."""
    parts = urlsplit(AMQP_URL)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 5672), timeout=2):
            pass
    except OSError as exc:
        missing("amqp", f"{parts.hostname}:{parts.port or 5672}: {exc}")
    vhost = unique("taskmon_test")
    user = parts.username or "guest"
    if rabbitmqctl("add_vhost", vhost) and rabbitmqctl("set_permissions", "-p", vhost, user, ".*", ".*", ".*"):
        yield urlunsplit(parts._replace(path="/" + vhost))
        rabbitmqctl("delete_vhost", vhost)
    else:
        yield AMQP_URL


# -- Celery workers -----------------------------------------------------------------------------

@pytest.fixture
def start_worker(tmp_path):
    """Start real `celery worker` subprocesses: start_worker(broker_url, app=..., queues=...)."""
    started: list[Worker] = []

    def start(broker_url: str, app: str = "tests.apps.sample", **kwargs) -> Worker:
        worker = Worker(app, broker_url, logdir=tmp_path, **kwargs)
        started.append(worker)
        return worker.wait_ready()

    yield start
    for worker in started:
        if worker.broker_url.startswith("amqp"):
            # RabbitMQ would hand the tasks a killed worker had not acknowledged (acks_late) to the
            # worker of a later test on the run's virtual host: let them finish.
            worker.stop()
        else:
            worker.discard()  # a test's Redis is flushed or gone before the next test runs
        # pytest shows a fixture's teardown output only when the test failed: the worker's side of it.
        print(f"--- {worker.log.name} (last 60 lines)", *worker.log.read_text(errors="replace").splitlines()[-60:],
              sep="\n")


@pytest.fixture
def celery_client():
    """celery_client(broker_url): a fresh Celery app that sends tasks by name (no shared pools between tests)."""
    from celery import Celery

    apps = []

    def make(broker_url: str, **conf):
        app = Celery(f"client{len(apps)}", broker=broker_url, set_as_current=False)
        app.conf.update({"task_send_sent_event": True, "broker_connection_retry_on_startup": True, **conf})
        apps.append(app)
        return app

    yield make
    for app in apps:
        relay = getattr(app, "_taskmon_relay", None)
        if relay is not None:  # its writer must not outlive the test and write into a later test's Redis
            relay.close(timeout=2)
        app.close()


@pytest.fixture
def start_beat(tmp_path):
    """Start real `celery beat` subprocesses: start_beat(app=..., env=..., ready=b"marker in its log")."""
    started: list[Beat] = []

    def start(app: str, ready: bytes = b"beat: Starting...", **kwargs) -> Beat:
        beat = Beat(app, logdir=tmp_path, **kwargs)
        started.append(beat)
        beat.wait_for(ready)
        return beat

    yield start
    for beat in started:
        beat.discard()


# -- SMTP ---------------------------------------------------------------------------------------

class SmtpSink:
    """A real SMTP server (aiosmtpd) that keeps every message it receives."""

    def __init__(self, **controller_kwargs):
        self.controller_kwargs = controller_kwargs  # e.g. tls_context / ssl_context (tests/test_mail.py)
        self.messages: list = []
        self.received = threading.Event()
        self.port = free_port()
        self.controller = None

    async def handle_DATA(self, server, session, envelope):
        from email import message_from_bytes
        from email.policy import default

        msg = message_from_bytes(envelope.content, policy=default)
        self.messages.append({"from": envelope.mail_from, "to": list(envelope.rcpt_tos), "message": msg})
        self.received.set()
        return "250 OK"

    def start(self) -> "SmtpSink":
        """Listen on ``port``; after stop() too (a stopped aiosmtpd Controller cannot start again)."""
        from aiosmtpd.controller import Controller

        self.controller = Controller(self, hostname="127.0.0.1", port=self.port, **self.controller_kwargs)
        self.controller.start()
        return self

    def stop(self) -> None:
        if self.controller is not None:
            self.controller.stop()
            self.controller = None


@pytest.fixture
def smtp_server():
    sink = SmtpSink().start()
    yield sink
    sink.stop()


def pytest_report_header(config):
    return f"taskmon tests: CI={'true' if IN_CI else 'false'} (missing PostgreSQL/RabbitMQ {'fails' if IN_CI else 'skips'})"

"""Running the app under uvicorn: refuse to start without tokens unless told, warn when told.

One process answers on one core at a time (the GIL), so `taskmon serve` runs ``http_workers``
uvicorn processes on one listening socket, supervised by uvicorn (a dead one is started again).
They share the session cookies' secret; each counts bad tokens on its own.
"""
from __future__ import annotations

import logging
import os
import secrets
from dataclasses import dataclass
from typing import Callable

from sqlalchemy import Engine

from tasks.settings import Settings, http_workers_for

log = logging.getLogger(__name__)
GRACEFUL_SHUTDOWN_SECONDS = 3
NO_AUTH_WARNING = ("WARNING: --insecure-no-auth: the API has no authentication; anyone who can reach "
                   "{address} may read the history, send and revoke tasks and control the workers")


class ServeError(RuntimeError):
    """The server cannot start as asked; the message says what to do."""


def check_can_start(engine: Engine, insecure_no_auth: bool, bad_token_limit: str) -> None:
    from limits import parse

    from storage.tokens import any_valid

    try:
        parse(bad_token_limit)
    except ValueError:
        raise ServeError(f"bad_token_limit (--bad-token-limit) {bad_token_limit!r} is not a rate such as 20/minute "
                         "or 5/second") from None
    if insecure_no_auth:
        return
    with engine.connect() as conn:
        if not any_valid(conn):
            raise ServeError("no API tokens: create one with `taskmon token create --name NAME --role admin`, "
                             "or start with --insecure-no-auth on a laptop")


@dataclass(frozen=True)
class WorkerApp:
    """What each server process builds its app from: uvicorn pickles it into the process (spawn) and
    calls it there; the process opens its own engine on the same database."""

    settings: Settings
    insecure_no_auth: bool
    session_secret: bytes

    def __call__(self):
        from monitor.http.app import create_app
        from storage.db import make_engine

        return create_app(self.settings, make_engine(self.settings.database_url),
                          insecure_no_auth=self.insecure_no_auth, session_secret=self.session_secret)


def serve(settings: Settings, engine: Engine, *, insecure_no_auth: bool = False,
          echo: Callable[[str], None] = print, routers=()) -> None:
    check_can_start(engine, insecure_no_auth, settings.bad_token_limit)
    indexer = _search_indexer(engine)
    try:
        _serve(settings, engine, insecure_no_auth, echo, routers)
    finally:
        if indexer is not None:
            indexer.stop()


def _search_indexer(engine: Engine):
    """The thread that keeps the history search's text index (monitor.search_indexer), on SQLite
    its file made before any server process connects; None when another server keeps it (or it
    cannot be kept: searches scan)."""
    from monitor.search_indexer import PgSearchIndexer, SearchIndexer
    from storage.db import sqlite_path

    path = sqlite_path(engine)
    if path is not None:
        indexer = SearchIndexer(path)
    elif engine.dialect.name == "postgresql":
        indexer = PgSearchIndexer(engine)
    else:
        return None
    if not indexer.prepare():
        return None
    if path is not None:
        engine.dispose()  # pooled connections made before the file was there attach it when made again
    indexer.start()
    return indexer


def _serve(settings: Settings, engine: Engine, insecure_no_auth: bool, echo, routers) -> None:
    import uvicorn

    from monitor.http.app import create_app

    host, port = settings.http_host, settings.http_port
    workers = http_workers_for(settings, os.cpu_count())
    if routers and workers > 1:
        raise ServeError("extra routers are served by one process only: set http_workers (--workers) to 1")
    address = f"http://{host}:{port}"
    if insecure_no_auth:
        echo(NO_AUTH_WARNING.format(address=address))
    # The dashboard's live streams never end by themselves: on SIGTERM they get a few seconds
    # (a browser reconnects to the next server), not a wait for every tab to close.
    options = dict(log_level="warning", access_log=False, proxy_headers=False,
                   timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS)
    if workers == 1:
        app = create_app(settings, engine, insecure_no_auth=insecure_no_auth, routers=routers)
        echo(f"taskmon API on {address}/api/v1 (docs {address}/api/v1/docs), dashboard on {address}/")
        try:
            uvicorn.Server(uvicorn.Config(app, host=host, port=port, **options)).run()
        except OSError as exc:  # the port is taken
            raise ServeError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
        return

    from uvicorn.supervisors import Multiprocess

    engine.dispose()  # each process opens its own
    config = uvicorn.Config(WorkerApp(settings, insecure_no_auth, secrets.token_bytes(32)), factory=True,
                            host=host, port=port, workers=workers, **options)
    try:
        sock = config.bind_socket()
    except SystemExit:  # uvicorn has logged why (the port is taken)
        raise ServeError(f"cannot listen on {host}:{port}: the address is in use or not available") from None
    echo(f"taskmon API on {address}/api/v1 (docs {address}/api/v1/docs), dashboard on {address}/; "
         f"{workers} server processes")
    try:
        Multiprocess(config, sockets=[sock]).run()
    finally:
        sock.close()

"""Running the app under uvicorn: refuse to start without tokens unless told, warn when told."""
from __future__ import annotations

import logging
from typing import Callable

from sqlalchemy import Engine

from tasks.settings import Settings

log = logging.getLogger(__name__)
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
        raise ServeError(f"--bad-token-limit {bad_token_limit!r} is not a rate such as 20/minute or 5/second") from None
    if insecure_no_auth:
        return
    with engine.connect() as conn:
        if not any_valid(conn):
            raise ServeError("no API tokens: create one with `taskmon token create --name NAME --role admin`, "
                             "or start with --insecure-no-auth on a laptop")


def serve(settings: Settings, engine: Engine, *, host: str, port: int, insecure_no_auth: bool = False,
          bad_token_limit: str = "20/minute", echo: Callable[[str], None] = print, routers=()) -> None:
    import uvicorn

    from monitor.http.app import create_app

    check_can_start(engine, insecure_no_auth, bad_token_limit)
    app = create_app(settings, engine, insecure_no_auth=insecure_no_auth, bad_token_limit=bad_token_limit,
                     routers=routers)
    address = f"http://{host}:{port}"
    if insecure_no_auth:
        echo(NO_AUTH_WARNING.format(address=address))
    echo(f"taskmon API on {address}/api/v1 (docs {address}/api/v1/docs)")
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False,
                            proxy_headers=False)
    try:
        uvicorn.Server(config).run()
    except OSError as exc:  # the port is taken
        raise ServeError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None

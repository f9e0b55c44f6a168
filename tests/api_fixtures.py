"""Fixtures for the API tests: a history with one token per role, and `taskmon serve` on it."""
from __future__ import annotations

import pytest

from tests.api_helpers import ApiServer, create_token

ROLES = ("viewer", "operator", "admin")


@pytest.fixture
def start_api(tmp_path):
    """start_api(db_url, *serve_args, broker_url=..., env=...): a ready `taskmon serve`, stopped after the test."""
    started: list[ApiServer] = []

    def start(db_url: str, *args: str, **kwargs) -> ApiServer:
        server = ApiServer(db_url, *args, logdir=tmp_path, **kwargs)
        started.append(server)
        return server.wait_ready()

    yield start
    for server in started:
        server.stop()
        print(f"--- {server.log.name} (last 60 lines)", *server.output().splitlines()[-60:], sep="\n")


def role_tokens(db_url: str) -> dict[str, str]:
    """One token per role, named after it."""
    return {role: create_token(db_url, role, role) for role in ROLES}

from __future__ import annotations

import pytest

from .pg import PgServer


@pytest.fixture(scope="session")
def pg_server():
    try:
        server = PgServer()
    except RuntimeError as exc:  # make test installs Debian's postgresql: a missing server is a failure
        pytest.fail(f"no PostgreSQL server to test against: {exc}")
    server.start()
    try:
        yield server
    finally:
        server.cleanup()


@pytest.fixture
def pg_db(pg_server, monkeypatch):
    """A fresh database on the server for one test; the password only in the environment."""
    import uuid

    import psycopg

    name = "j" + uuid.uuid4().hex[:12]
    with psycopg.connect(host="127.0.0.1", port=pg_server.port, user=pg_server.user, password=pg_server.password,
                         dbname="postgres", autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    monkeypatch.setenv("MMFLEET_JOURNAL_PASSWORD", pg_server.password)
    return f"postgresql://{pg_server.user}@127.0.0.1:{pg_server.port}/{name}"

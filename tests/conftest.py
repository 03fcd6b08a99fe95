"""Shared fixtures: a data folder, a store on SQLite and on the real PostgreSQL, the CLI.

PostgreSQL is the one at SPAMPOTS_TEST_POSTGRES_URL (default: the machine's, 127.0.0.1:5432,
database ``test``, user ``postgres``). Each test gets its own schema, dropped afterwards. With
CI=true an unreachable PostgreSQL fails the test instead of skipping it.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from feeds import cli
from feeds.home import engine_for, init_home
from feeds.settings import Settings, load_settings

REPO = Path(__file__).resolve().parent.parent
POSTGRES_URL = os.environ.get(
    "SPAMPOTS_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
IN_CI = os.environ.get("CI", "").lower() == "true"


def _postgres_or_fail() -> None:
    engine = sa.create_engine(POSTGRES_URL, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as connection:
            connection.execute(sa.text("SELECT 1"))
    except sa.exc.OperationalError as error:
        message = f"PostgreSQL at {POSTGRES_URL} is unreachable: {error.orig}"
        if IN_CI:
            pytest.fail(message + " (CI=true: the PostgreSQL tests must run)")
        pytest.skip(message)
    finally:
        engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A store URL, once for SQLite and once for a fresh PostgreSQL schema."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/store.db"
        return
    _postgres_or_fail()
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
    with admin.connect() as connection:
        connection.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    url = f"{POSTGRES_URL}?options=-csearch_path%3D{schema}"
    try:
        yield url
    finally:
        engine_for(url).dispose()
        with admin.connect() as connection:
            connection.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "var"


@pytest.fixture
def environ(home: Path, database_url: str) -> dict[str, str]:
    """The environment a staff member would set: data folder, store and the shipped partners."""
    return {
        "SPAMPOTS_HOME": str(home),
        "SPAMPOTS_DATABASE_URL": database_url,
        "SPAMPOTS_PARTNERS": str(REPO / "partners.yaml"),
    }


@pytest.fixture
def settings(environ: dict[str, str]) -> Settings:
    return load_settings(environ)


@pytest.fixture
def initialised(settings: Settings) -> Settings:
    """Settings of a data folder and store after 'spampots init'."""
    init_home(settings)
    return settings


@pytest.fixture
def run_cli(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], environ: dict[str, str]
) -> Callable[..., tuple[int, str, str]]:
    """Run the spampots command in-process with the test's environment: (exit, stdout, stderr)."""

    def run(*argv: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
        for name in [n for n in os.environ if n.startswith("SPAMPOTS_")]:
            monkeypatch.delenv(name)
        for name, value in {**environ, **(env or {})}.items():
            monkeypatch.setenv(name, value)
        code = cli.main(list(argv))
        out, err = capsys.readouterr()
        return code, out, err

    return run


@pytest.fixture
def taxii(tmp_path: Path, environ: dict[str, str]) -> Iterator[object]:
    """The real TAXII server on a loopback port over an initialised store (tests/taxii_helpers)."""
    from taxii_helpers import start_taxii

    with start_taxii(tmp_path, environ) as running:
        yield running


@pytest.fixture
def smtp_sink() -> Iterator[object]:
    """A real SMTP server (aiosmtpd, no TLS) on a loopback port; see tests/smtp_sink.py."""
    from smtp_sink import start_smtp_sink

    with start_smtp_sink() as sink:
        yield sink


@pytest.fixture(scope="module")
def private_postgres() -> Iterator[object]:
    """A PostgreSQL server of the module's own, to restart (tests/private_postgres.py). With
    CI=true, a machine without PostgreSQL's server programs fails the test instead of skipping."""
    from private_postgres import postgres_bin
    from private_postgres import private_postgres as start

    found = postgres_bin()
    if found is None:
        message = "no initdb (set SPAMPOTS_TEST_POSTGRES_BIN to PostgreSQL's bin folder)"
        if IN_CI:
            pytest.fail(message + " (CI=true: the PostgreSQL tests must run)")
        pytest.skip(message)
    with start(found) as server:
        yield server


@pytest.fixture
def crasher(tmp_path: Path) -> Iterator[object]:
    """Runs spampots commands SIGKILLed at chosen steps (tests/crash_helpers.py)."""
    from crash_helpers import Crasher

    folder = tmp_path / "crash-runs"
    folder.mkdir()
    running = Crasher(folder)
    try:
        yield running
    finally:
        running.close()


@pytest.fixture
def generated(initialised: Settings, environ: dict[str, str], tmp_path: Path) -> object:
    """An initialised store whose spool holds ~300 generated messages (tests/ingest_helpers);
    ``.settings`` read the generator's .mmdb files, ``.data.expected`` has the figures."""
    from ingest_helpers import generate_home

    return generate_home(environ, tmp_path, 300, seed=7, bad_every=40)


@pytest.fixture
def ingested(generated: object) -> object:
    """``generated``, after one clean 'spampots ingest' of its spool."""
    from feeds.ingest import ingest_run

    ingest_run(generated.settings).run()  # type: ignore[attr-defined]
    return generated

"""'spampots init' sets up a data folder and store, on SQLite and PostgreSQL, and is idempotent."""

from __future__ import annotations

import stat
from collections.abc import Callable
from pathlib import Path

import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from feeds.home import engine_for, open_store
from feeds.keys import jwks, list_keys, load_private_key, thumbprint
from feeds.settings import Settings

RunCli = Callable[..., tuple[int, str, str]]


def snapshot(settings: Settings) -> dict[str, object]:
    engine = engine_for(settings.database_url)
    inspector = sa.inspect(engine)
    with engine.connect() as connection:
        keys = [(k.kid, k.public_x, k.status) for k in list_keys(connection)]
        version = connection.execute(sa.text("SELECT version_num FROM alembic_version")).all()
    files = sorted(
        str(p.relative_to(settings.home))
        for p in Path(settings.home).rglob("*")
        if "spampots.db" not in p.name
    )
    return {
        "tables": sorted(inspector.get_table_names()),
        "keys": keys,
        "version": sorted(version),
        "files": files,
    }


def test_init_creates_folder_store_and_a_private_signing_key(
    run_cli: RunCli, settings: Settings
) -> None:
    code, out, err = run_cli("init")
    assert (code, err) == (0, "")
    assert "migrated the store" in out and "created signing key" in out
    for folder in ("spool/incoming", "spool/raw", "raw", "outbox", "keys"):
        assert (Path(settings.home) / folder).is_dir()
    engine = open_store(settings)
    with engine.connect() as connection:
        [key] = list_keys(connection)
        published = jwks(connection)
    assert key.status == "active"
    key_file = Path(settings.keys_dir) / f"{key.kid}.pem"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(Path(settings.keys_dir).stat().st_mode) == 0o700
    private = load_private_key(Path(settings.keys_dir), key.kid)
    assert isinstance(private, Ed25519PrivateKey)
    assert thumbprint(key.public_x) == key.kid
    assert published["keys"][0]["kid"] == key.kid
    assert "d" not in published["keys"][0]
    assert key_file.read_text() not in out


def test_init_twice_changes_nothing(run_cli: RunCli, settings: Settings) -> None:
    assert run_cli("init")[0] == 0
    before = snapshot(settings)
    code, out, _ = run_cli("init")
    assert code == 0
    assert out.startswith("nothing to do")
    assert snapshot(settings) == before


def test_sqlite_store_runs_in_wal_mode_with_foreign_keys(tmp_path: Path) -> None:
    engine = engine_for(f"sqlite:///{tmp_path}/wal.db")
    with engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1


def test_an_uninitialised_store_says_run_init(settings: Settings) -> None:
    from feeds.errors import StoreError

    try:
        open_store(settings)
    except StoreError as error:
        assert "spampots init" in str(error)
    else:
        raise AssertionError("an empty store was accepted")


def test_unreachable_database_is_one_line_not_a_traceback(run_cli: RunCli) -> None:
    code, out, err = run_cli(
        "init", env={"SPAMPOTS_DATABASE_URL": "postgresql+psycopg://nobody@127.0.0.1:1/none"}
    )
    assert (code, out) == (1, "")
    assert err.count("\n") == 1
    assert "cannot reach the store" in err and "SPAMPOTS_DATABASE_URL" in err
    assert "Traceback" not in err

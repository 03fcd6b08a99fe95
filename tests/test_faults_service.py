"""Faults around the running service, through the worker's own jobs: the SMTP server down for a
while, the data folder's disk full, a .mmdb file replaced. Each gives one clear log line, and
the next runs do the work once the fault is gone; partners.yaml edited while the worker and the
TAXII server run, well or badly: one line each, the last good file stays in force."""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import sqlalchemy as sa
from ingest_helpers import GeneratedHome, generate_home
from loopback import free_port
from smtp_sink import start_smtp_sink
from taxii_helpers import PASSWORDS as TAXII_PASSWORDS
from taxii_helpers import partners_yaml, start_taxii
from test_ingest_crash import dump

from conftest import IN_CI, REPO
from feeds.enrich import MmdbDatabase
from feeds.generator import generate
from feeds.home import init_home, open_store
from feeds.jobs import jobs_for
from feeds.partners import load_partners
from feeds.settings import Settings, load_settings
from feeds.store.captures import messages
from feeds.worker import JobSpec, Worker, run_job

TAXII = {"Accept": "application/taxii+json;version=2.1"}


def jobs(settings: Settings) -> dict[str, JobSpec]:
    config = load_partners(settings.partners)
    return {spec.name: spec for spec in jobs_for(settings, config, open_store(settings))}


def errors_logged(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno >= logging.ERROR]


def stored_messages(settings: Settings) -> int:
    with open_store(settings).connect() as connection:
        count = connection.execute(sa.select(sa.func.count()).select_from(messages))
        return int(count.scalar_one())


# Not about the store: SQLite only (the delivery records' SQL runs on both in test_digest_mail).
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_smtp_down_for_a_while_the_digest_goes_once_when_it_is_back(
    initialised: Settings, environ: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    port = free_port()
    settings = load_settings(
        {**environ, "SPAMPOTS_SMTP_URL": f"smtp://127.0.0.1:{port}", "SPAMPOTS_SMTP_RETRIES": "1"}
    )
    specs = jobs(settings)
    engine = open_store(settings)
    with caplog.at_level(logging.INFO, logger="spampots.worker"):
        assert run_job(engine, specs["digest:twcert"]) is None
        [failed] = errors_logged(caplog)
        assert not failed.exc_info
        assert "digest:twcert failed" in failed.getMessage()
        assert f"cannot talk to smtp://127.0.0.1:{port}" in failed.getMessage()
        caplog.clear()
        assert run_job(engine, specs["digest-retry"]) is not None  # still down: tried, kept
        assert errors_logged(caplog) == []
        with start_smtp_sink(port=port) as sink:
            assert run_job(engine, specs["digest-retry"]) is not None
            assert [m.rcpt_tos for m in sink.received] == [["twcert@example.org"]]
            # Neither the retry job nor the weekly job sends it a second time.
            assert run_job(engine, specs["digest-retry"]) is not None
            outcome = run_job(engine, specs["digest:twcert"])
            assert outcome is not None and "already-sent" in outcome.message
            assert len(sink.received) == 1


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MB tmpfs: a real disk that fills up (ENOSPC). Mounting needs root."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        message = f"cannot mount a tmpfs: {mounted.stderr.strip()}"
        if IN_CI:
            pytest.fail(message + " (CI=true: the disk-full test must run)")
        pytest.skip(message)
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def fill(folder: Path) -> Path:
    """Takes every free byte of the file system under ``folder``; returns the filler."""
    filler = folder / "filler"
    with filler.open("wb") as out:
        try:
            while True:
                out.write(b"\0" * 65536)
                out.flush()
        except OSError as error:
            assert error.errno == 28  # ENOSPC
    return filler


def test_disk_full_in_the_data_folder_then_freed(
    small_disk: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The data folder (spool, raw messages, metrics) on a full disk: ingest fails in one line,
    keeps the batches for later, and the run after space is freed stores them all, once."""
    environ = {
        "SPAMPOTS_HOME": str(small_disk / "var"),
        "SPAMPOTS_DATABASE_URL": f"sqlite:///{tmp_path}/store.db",
        "SPAMPOTS_PARTNERS": str(REPO / "partners.yaml"),
    }
    init_home(load_settings(environ))
    generated: GeneratedHome = generate_home(environ, tmp_path, 120, seed=5)
    clean_env = {
        **generated.environ,
        "SPAMPOTS_HOME": str(tmp_path / "clean"),
        "SPAMPOTS_DATABASE_URL": f"sqlite:///{tmp_path}/clean.db",
    }
    shutil.copytree(small_disk / "var" / "spool", tmp_path / "clean" / "spool")
    clean = load_settings(clean_env)
    init_home(clean)
    assert run_job(open_store(clean), jobs(clean)["ingest"]) is not None

    settings = generated.settings
    filler = fill(small_disk)
    with caplog.at_level(logging.INFO, logger="spampots.worker"):
        run_job(open_store(settings), jobs(settings)["ingest"])
    logged = errors_logged(caplog)
    assert logged and all(not r.exc_info for r in logged)
    for record in logged:  # the file system's words, or SQLite's for the raw packs
        assert re.search(r"No space left on device|disk is full", record.getMessage()), record
        assert "database server" not in record.getMessage()  # SQLite is a file: no server to blame
    assert stored_messages(settings) < generated.data.expected.emails
    filler.unlink()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="spampots.worker"):
        assert run_job(open_store(settings), jobs(settings)["ingest"]) is not None
    assert errors_logged(caplog) == []
    assert stored_messages(settings) == generated.data.expected.emails
    assert dump(settings.database_url, small_disk / "var") == dump(
        clean.database_url, tmp_path / "clean"
    )


REWRITTEN_IN_PLACE = """
import sys
from pathlib import Path
from feeds.enrich import MmdbDatabase

path = Path(sys.argv[1])
database = MmdbDatabase(path, "country")
before = database.lookup(sys.argv[2])
path.write_bytes(b"")  # cp over it: truncated first, then written
path.write_bytes(Path(sys.argv[3]).read_bytes())
assert database.lookup(sys.argv[2]) == before, database.lookup(sys.argv[2])
print(before[0])
"""


def test_a_mmdb_file_rewritten_while_in_use_does_not_kill_the_process(tmp_path: Path) -> None:
    # A mapped file cut short under a reader is SIGBUS for the whole process: in a child.
    data = generate(tmp_path / "spool", tmp_path / "mmdb", 40, seed=3)
    country = Path(data.country_mmdb)
    database = MmdbDatabase(country, "country")
    address = next(ip for ip in sorted(data.expected.src_ips) if database.lookup(ip)[0])
    done = subprocess.run(
        [sys.executable, "-c", REWRITTEN_IN_PLACE, str(country), address, str(country)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, (done.returncode, done.stderr)
    assert len(done.stdout.strip()) == 2  # a country code, read before and after


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_mmdb_file_replaced_while_the_worker_runs(
    generated: GeneratedHome, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = generated.settings
    country = Path(settings.country_mmdb)
    whole = country.read_bytes()
    specs = jobs(settings)
    engine = open_store(settings)
    # Caught half written (a copy in progress): one line naming the file, nothing ingested.
    country.write_bytes(whole[: len(whole) // 2])
    with caplog.at_level(logging.INFO, logger="spampots.worker"):
        assert run_job(engine, specs["ingest"]) is None
    [failed] = errors_logged(caplog)
    assert not failed.exc_info
    assert f"cannot read the country database {country}" in failed.getMessage()
    assert stored_messages(settings) == 0
    # Replaced whole, by a rename as geoipupdate does: the next run ingests everything.
    replacement = country.with_name("country.mmdb.new")
    replacement.write_bytes(whole)
    replacement.replace(country)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="spampots.worker"):
        assert run_job(engine, specs["ingest"]) is not None
    assert errors_logged(caplog) == []
    assert stored_messages(settings) == generated.data.expected.emails


def test_partners_yaml_edited_while_running_one_line_each_and_both_go_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The worker and the TAXII server both re-read partners.yaml: a bad edit is one line in
    each (naming the file and line) and the last good file stays in force; a good one applies."""
    environ = {
        "SPAMPOTS_HOME": str(tmp_path / "var"),
        "SPAMPOTS_DATABASE_URL": f"sqlite:///{tmp_path}/store.db",
    }
    with start_taxii(tmp_path, environ) as taxii:
        settings = taxii.settings
        worker = Worker(settings, open_store(settings), jobs_for)
        assert worker.reload_partners()
        collection = load_partners(settings.partners).collection("jpcert-originating")
        assert collection is not None
        url = taxii.collection_url(collection.id) + "objects/"

        def status(user: str) -> int:
            auth = (user, TAXII_PASSWORDS[user])
            return requests.get(url, auth=auth, headers=TAXII, timeout=30).status_code

        path = Path(settings.partners)
        good = path.read_text()
        path.write_text(good.replace("economy: JP", "economy: J1"))
        caplog.clear()
        with caplog.at_level(logging.INFO):
            assert not worker.reload_partners()
            assert status("jpcert") == 200
        logged = errors_logged(caplog)
        assert len(logged) == 2  # the worker's line and the server's
        for record in logged:
            message = record.getMessage()
            assert "\n" not in message and not record.exc_info
            assert f"{path}:" in message and "economy 'J1'" in message
        assert worker.config is not None and "jpcert" in worker.config.partners

        path.write_text(partners_yaml(usernames=("twcert", "certpl")))  # jpcert leaves
        caplog.clear()
        with caplog.at_level(logging.INFO):
            assert worker.reload_partners()
            assert status("jpcert") == 401
        assert errors_logged(caplog) == []
        assert "jpcert" not in worker.config.partners
        reloaded = [r.getMessage() for r in caplog.records if "reloaded" in r.getMessage()]
        assert len(reloaded) == 2, reloaded

"""SIGKILL at any moment (20 random steps, named points, from outside), then run again: the store
ends exactly as after one clean run."""

from __future__ import annotations

import datetime as dt
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from crash_helpers import Crasher, child, kill_gaps
from ingest_helpers import generate_home

from feeds.batches import ingest_batches, quarantine
from feeds.enrich import enrichment_sources
from feeds.home import engine_for, init_home
from feeds.rawstore import kept_digests
from feeds.settings import Settings, load_settings
from feeds.store.captures import message_domains, message_urls, messages, sessions, urls

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
# Surrogate keys that a database sequence hands out (PostgreSQL does not roll them back).
SEQUENCED = {"ingest_batches": "id", "quarantine": "id", "enrichment_sources": "id"}


def _value(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return None  # when it happened differs between runs
    return value


def dump(url: str, home: Path) -> dict[str, Any]:
    """Everything ingest keeps, by natural keys, comparable across runs and databases."""
    with engine_for(url).connect() as connection:
        batch_digest = dict(
            connection.execute(sa.select(ingest_batches.c.id, ingest_batches.c.digest)).all()
        )
        source = {
            row.id: (row.kind, row.name, row.version)
            for row in connection.execute(sa.select(enrichment_sources))
        }
        tables: dict[str, Any] = {}
        for table in (
            ingest_batches,
            quarantine,
            sessions,
            messages,
            message_domains,
            urls,
            message_urls,
            enrichment_sources,
        ):
            rows = []
            for row in connection.execute(sa.select(table)).mappings():
                values = {k: _value(v) for k, v in row.items() if k != SEQUENCED.get(table.name)}
                if "batch_id" in values:
                    values["batch_id"] = batch_digest[values["batch_id"]]
                for column in (
                    "src_cc_source",
                    "src_asn_source",
                    "dst_cc_source",
                    "dst_asn_source",
                ):
                    if column in values and values[column] is not None:
                        values[column] = source[values[column]]
                rows.append(tuple(sorted(values.items(), key=lambda kv: kv[0])))
            tables[table.name] = sorted(rows, key=repr)
    files = {
        folder: sorted(
            str(p.relative_to(home / folder))
            for p in (home / folder).rglob("*")
            if p.is_file() and not p.name.endswith(".tmp")
        )
        for folder in ("spool/done", "spool/incoming")
    }
    return {"tables": tables, "files": files, "raw": list(kept_digests(home / "raw"))}


def cli(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "feeds.cli", *args],
        env={**os.environ, **env},
        cwd=REPO,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def lines_done(url: str) -> int:
    with engine_for(url).connect() as connection:
        return int(
            connection.execute(
                sa.select(sa.func.coalesce(sa.func.sum(ingest_batches.c.lines_done), 0))
            ).scalar_one()
        )


def test_sigkill_anywhere_then_again_equals_one_clean_run(
    initialised: Settings, environ: dict[str, str], tmp_path: Path, crasher: Crasher
) -> None:
    generated = generate_home(environ, tmp_path, 300, seed=11, bad_every=25, batch_lines=120)
    crashed_env = {**generated.environ, "SPAMPOTS_INGEST_CHUNK_LINES": "40"}
    home = Path(crashed_env["SPAMPOTS_HOME"])
    url = crashed_env["SPAMPOTS_DATABASE_URL"]
    # The clean reference: the same spool, another data folder and store, one run.
    clean_home = tmp_path / "clean"
    shutil.copytree(home / "spool", clean_home / "spool")
    clean_url = f"sqlite:///{tmp_path}/clean.db"
    clean_env = {
        **crashed_env,
        "SPAMPOTS_HOME": str(clean_home),
        "SPAMPOTS_DATABASE_URL": clean_url,
    }
    init_home(load_settings(clean_env))
    clean, steps = crasher.counted(clean_env, ["ingest"])
    assert clean.code == 0, clean.stderr

    # 20 seeded random steps (statements, commits, file renames) in the first half of the
    # work, one killed run after the other; then the named points and an outside kill.
    runs = crasher.killed_runs(crashed_env, ["ingest"], kill_gaps(seed=20, steps=steps // 2))
    assert [run.code for run in runs] == [-signal.SIGKILL] * 20
    for point, n in (("in-chunk", 3), ("after-chunk", 4), ("before-move", 2), ("in-chunk", 1)):
        killed = child(crashed_env, point, str(n))
        assert killed.returncode == -signal.SIGKILL, (point, killed.stderr)
    # And once from outside, at whatever moment the process happens to be in.
    before = lines_done(url)
    running = cli(crashed_env, "ingest")
    deadline = time.monotonic() + 120
    while lines_done(url) == before and running.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    running.send_signal(signal.SIGKILL)
    running.communicate(timeout=60)
    assert lines_done(url) > before

    final = cli(crashed_env, "ingest")
    _, err = final.communicate(timeout=300)
    assert final.returncode == 0, err
    assert dump(url, home) == dump(clean_url, clean_home)
    expected = generated.data.expected
    with engine_for(url).connect() as connection:
        assert (
            connection.execute(sa.select(sa.func.count()).select_from(messages)).scalar_one()
            == expected.emails
        )
        assert (
            connection.execute(sa.select(sa.func.sum(ingest_batches.c.records_read))).scalar_one()
            == expected.records
        )

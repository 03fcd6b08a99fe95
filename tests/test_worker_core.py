"""The worker: one active at a time, catch-up after downtime, live partners.yaml edits."""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine

from conftest import REPO
from feeds.home import open_store
from feeds.partners import PartnersConfig
from feeds.settings import Settings, load_settings
from feeds.worker import (
    CATCH_UP,
    JobOutcome,
    JobSpec,
    Worker,
    interval,
    is_overdue,
    run_job,
    weekly,
)


def per_partner_jobs(runs: list[str]) -> object:
    def jobs_for(settings: Settings, config: PartnersConfig, engine: Engine) -> list[JobSpec]:
        def make(partner_id: str) -> JobSpec:
            def run() -> JobOutcome:
                runs.append(partner_id)
                return JobOutcome("counted", counts={"objects": 1})

            return JobSpec(
                f"publish:{partner_id}", interval(dt.timedelta(hours=1)), run, partner=partner_id
            )

        return [make(partner_id) for partner_id in config.partners]

    return jobs_for


@pytest.fixture
def own_partners(initialised: Settings, environ: dict[str, str], tmp_path: Path) -> Settings:
    """Settings whose partners.yaml is a copy the test may edit."""
    copy = tmp_path / "partners.yaml"
    shutil.copy(REPO / "partners.yaml", copy)
    return load_settings({**environ, "SPAMPOTS_PARTNERS": str(copy)})


def make_worker(settings: Settings, runs: list[str]) -> Worker:
    worker = Worker(
        settings,
        open_store(settings),
        per_partner_jobs(runs),  # type: ignore[arg-type]
        heartbeat=0.05,
        lease=dt.timedelta(seconds=2),
    )
    worker.reload_partners()
    worker.scheduler.start(paused=True)
    return worker


def scheduled(worker: Worker) -> set[str]:
    """The ids of the regular jobs (not the one-off catch-up)."""
    return {job.id for job in worker.scheduler.get_jobs()} - {CATCH_UP}


def wait_for(condition: object, seconds: float = 10.0) -> None:
    import time

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def test_two_workers_one_active_and_the_standby_takes_over(own_partners: Settings) -> None:
    runs_a: list[str] = []
    runs_b: list[str] = []
    first, second = make_worker(own_partners, runs_a), make_worker(own_partners, runs_b)
    try:
        first.tick()
        second.tick()
        assert first.active and not second.active
        wait_for(lambda: len(runs_a) == 6)
        assert sorted(runs_a) == sorted(first.config.partners)  # type: ignore[union-attr]
        second.tick()
        assert runs_b == [] and not second.active
        first.leadership.release()
        first.scheduler.pause()
        second.tick()
        assert second.active
    finally:
        for worker in (first, second):
            worker.scheduler.shutdown(wait=True)
            worker.leadership.release()


def test_catch_up_runs_an_overdue_job_once_and_skips_a_recent_one(own_partners: Settings) -> None:
    engine = open_store(own_partners)
    runs: list[str] = []
    jobs_for = per_partner_jobs(runs)
    config_worker = make_worker(own_partners, [])
    config_worker.scheduler.shutdown()
    specs = jobs_for(own_partners, config_worker.config, engine)  # type: ignore[operator]
    fresh = next(spec for spec in specs if spec.partner == "twcert")
    run_job(engine, fresh)
    assert runs == ["twcert"]
    worker = make_worker(own_partners, runs)
    try:
        worker.tick()
        wait_for(lambda: len(runs) == 6)
        assert sorted(runs[1:]) == sorted(p for p in worker.config.partners if p != "twcert")  # type: ignore[union-attr]
    finally:
        worker.scheduler.shutdown(wait=True)
        worker.leadership.release()


def test_a_bad_edit_keeps_the_last_good_configuration_and_a_good_edit_adds_jobs(
    own_partners: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    runs: list[str] = []
    worker = make_worker(own_partners, runs)
    path = Path(own_partners.partners)
    try:
        worker.tick()
        assert len(scheduled(worker)) == 6
        good = path.read_text()
        path.write_text(good.replace("economy: JP", "economy: JX"))
        worker.tick()
        assert "partners.yaml edit refused" in caplog.text
        assert "economy 'JX' is not an ISO 3166-1 alpha-2 code" in caplog.text
        assert worker.config is not None and worker.config.partners["jpcert"].economy == "JP"
        assert len(scheduled(worker)) == 6
        addition = good.replace(
            "  hkcert:", "  krcert:\n    name: KrCERT/CC\n    economy: KR\n  hkcert:"
        )
        path.write_text(addition)
        worker.tick()
        assert "krcert" in worker.config.partners
        assert "publish:krcert" in scheduled(worker)
    finally:
        worker.scheduler.shutdown(wait=True)
        worker.leadership.release()


def test_a_failing_job_is_logged_and_recorded_not_raised(
    own_partners: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    from feeds.errors import StoreError
    from feeds.worker import last_successes

    def broken() -> JobOutcome:
        raise StoreError("the store went away", hint="check the database")

    engine = open_store(own_partners)
    spec = JobSpec("ingest", interval(dt.timedelta(minutes=1)), broken)
    assert run_job(engine, spec) is None
    assert "ingest failed: the store went away; check the database" in caplog.text
    assert "ingest" not in last_successes(engine)


def test_weekly_digest_trigger_is_overdue_only_after_its_fire_time() -> None:
    trigger = weekly(0, dt.time(9, 0), "Asia/Taipei")
    monday_9_taipei = dt.datetime(2026, 11, 30, 1, 0, tzinfo=dt.UTC)
    sent_before = monday_9_taipei - dt.timedelta(days=1)
    assert is_overdue(trigger, sent_before, monday_9_taipei + dt.timedelta(minutes=5))
    assert not is_overdue(trigger, sent_before, monday_9_taipei - dt.timedelta(minutes=5))
    assert not is_overdue(
        trigger, monday_9_taipei + dt.timedelta(minutes=1), monday_9_taipei + dt.timedelta(days=6)
    )


def test_json_logs_give_one_line_per_job_run_with_partner_batch_and_counts(
    own_partners: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    import json
    import logging

    from feeds.logs import configure_logging

    def publish() -> JobOutcome:
        return JobOutcome("1 batches", counts={"objects": 42}, fields={"batch": "b-123"})

    root = logging.getLogger()
    saved = root.handlers[:], root.level
    configure_logging("INFO", "json")
    try:
        run_job(
            open_store(own_partners),
            JobSpec("publish:twcert", interval(dt.timedelta(hours=1)), publish, partner="twcert"),
        )
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    [entry] = [line for line in lines if line.get("job") == "publish:twcert"]
    assert entry["partner"] == "twcert" and entry["batch"] == "b-123"
    assert entry["objects"] == 42 and entry["level"] == "INFO"
    assert entry["ts"].endswith("Z")

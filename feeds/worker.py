"""The scheduler worker: runs ingest, publish, digests, expiry and the key reminder on schedule.

One worker is active at a time (:mod:`feeds.leader`); a standby waits and takes over. A job
never overlaps itself, misfires are coalesced, and a job whose last success is older than its
schedule runs once when the worker becomes active, so downtime costs one catch-up run, not many.
partners.yaml is re-read when it changes: a good edit replaces the jobs, a bad one is logged
line by line and the last good configuration keeps running.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger
from sqlalchemy.engine import Engine

from feeds.errors import SpampotsError
from feeds.leader import Leadership
from feeds.metrics import observe_job
from feeds.partners import PartnersConfig, check_partners_file, file_stamp
from feeds.settings import Settings
from feeds.store import as_utc, metadata, store_unavailable, write_transaction

log = logging.getLogger("spampots.worker")

job_runs = sa.Table(
    "job_runs",
    metadata,
    sa.Column("name", sa.String(200), primary_key=True),
    sa.Column("last_started", sa.DateTime(timezone=True)),
    sa.Column("last_finished", sa.DateTime(timezone=True)),
    sa.Column("last_success", sa.DateTime(timezone=True)),
    sa.Column("last_status", sa.String(16)),
    sa.Column("last_message", sa.Text),
    sa.Column("runs", sa.Integer, nullable=False, server_default="0"),
)


@dataclass(frozen=True)
class JobOutcome:
    """What one run did, for its log line and metrics: e.g. counts={"accepted": 10}."""

    message: str = "done"
    counts: dict[str, int] = field(default_factory=dict)
    fields: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class JobSpec:
    name: str
    trigger: BaseTrigger
    run: Callable[[], JobOutcome]
    partner: str | None = None


JobsFor = Callable[[Settings, PartnersConfig, Engine], list[JobSpec]]


CATCH_UP = "catch-up"
STAGE_ORDER = ("ingest", "publish", "expire", "digest")


def _stage_order(spec: JobSpec) -> int:
    kind = spec.name.split(":", 1)[0]
    return STAGE_ORDER.index(kind) if kind in STAGE_ORDER else len(STAGE_ORDER)


def last_successes(engine: Engine) -> dict[str, dt.datetime]:
    with engine.connect() as connection:
        rows = connection.execute(sa.select(job_runs.c.name, job_runs.c.last_success))
        return {name: as_utc(moment) for name, moment in rows if moment is not None}


def _record(engine: Engine, name: str, starting: bool = False, **values: Any) -> None:
    with write_transaction(engine) as connection:
        change = {**values, "runs": job_runs.c.runs + 1} if starting else values
        updated = connection.execute(
            job_runs.update().where(job_runs.c.name == name).values(**change)
        ).rowcount
        if not updated:
            connection.execute(
                job_runs.insert().values(name=name, runs=1 if starting else 0, **values)
            )


def interval(every: dt.timedelta) -> IntervalTrigger:
    return IntervalTrigger(seconds=max(1, int(every.total_seconds())), timezone=dt.UTC)


def weekly(weekday: int, at: dt.time, timezone: str) -> CronTrigger:
    days = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
    return CronTrigger(day_of_week=days[weekday], hour=at.hour, minute=at.minute, timezone=timezone)


def is_overdue(trigger: BaseTrigger, last_success: dt.datetime | None, now: dt.datetime) -> bool:
    """Whether a fire time passed since the last success (or the job never succeeded)."""
    if last_success is None:
        return True
    due = trigger.get_next_fire_time(None, last_success + dt.timedelta(microseconds=1))
    return due is not None and due <= now


class Worker:
    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        jobs_for: JobsFor,
        heartbeat: float = 5.0,
        lease: dt.timedelta = dt.timedelta(seconds=30),
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.jobs_for = jobs_for
        self.heartbeat = heartbeat
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{id(self):x}"
        self.leadership = Leadership(engine, self.holder, lease)
        self.scheduler = BackgroundScheduler(
            timezone=dt.UTC,
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
        )
        self.config: PartnersConfig | None = None
        self._partners_stamp: tuple[int, int, int] | None = None
        self._active = False
        self._stop = threading.Event()

    @property
    def active(self) -> bool:
        return self._active

    def stop(self) -> None:
        self._stop.set()

    def run_forever(self) -> None:
        """Until :meth:`stop`: take part in leader election, keep jobs and config current."""
        self.reload_partners()
        if self.config is None:
            raise SpampotsError(
                f"{self.settings.partners} has mistakes; the worker cannot start",
                hint="run 'spampots partners check' and fix them",
            )
        self.scheduler.start(paused=True)
        log.info("worker started", extra={"holder": self.holder})
        try:
            while not self._stop.is_set():
                self.tick()
                self._stop.wait(self.heartbeat)
        finally:
            self.scheduler.shutdown(wait=True)
            if self._active:
                self.leadership.release()
            log.info("worker stopped", extra={"holder": self.holder})

    @property
    def heartbeat_file(self) -> Path:
        return Path(self.settings.home) / "worker.heartbeat"

    def tick(self) -> None:
        """One heartbeat: renew or seek the active role, pick up partners.yaml edits."""
        self.heartbeat_file.touch()
        try:
            held = (
                self.leadership.try_acquire() if not self._active else self.leadership.still_held()
            )
        except sa.exc.DBAPIError as error:
            log.warning(
                "cannot reach the store to renew the worker role: %s",
                " ".join(str(error.orig).split()),
            )
            held = False
        if held and not self._active:
            self._active = True
            log.info("this worker is now active", extra={"holder": self.holder})
            self._schedule(catch_up=True)
            self.scheduler.resume()
        elif not held and self._active:
            self._active = False
            self.scheduler.pause()
            log.warning(
                "this worker is no longer active; standing by", extra={"holder": self.holder}
            )
        if self.reload_partners() and self._active:
            self._schedule(catch_up=False)

    def reload_partners(self) -> bool:
        """Re-read partners.yaml if it changed; True when a new good configuration is in use."""
        path = Path(self.settings.partners)
        stamp = file_stamp(path)
        if stamp == self._partners_stamp and self.config is not None:
            return False
        self._partners_stamp = stamp
        config, problems = check_partners_file(path)
        if config is None:
            kept = (
                f"keeping the last good configuration ({len(self.config.partners)} partners)"
                if self.config is not None
                else "no configuration to run"
            )
            for problem in problems:  # one line per mistake, each saying what happens
                log.error("partners.yaml edit refused, %s: %s", kept, problem)
            return False
        changed = self.config is not None
        self.config = config
        if changed:
            log.info("partners.yaml reloaded", extra={"partners": len(config.partners)})
        return True

    def _schedule(self, catch_up: bool) -> None:
        assert self.config is not None
        specs = self.jobs_for(self.settings, self.config, self.engine)
        wanted = {spec.name for spec in specs} | {CATCH_UP}
        for job in self.scheduler.get_jobs():
            if job.id not in wanted:
                job.remove()
        for spec in specs:
            self.scheduler.add_job(
                self._run,
                spec.trigger,
                args=[spec],
                id=spec.name,
                name=spec.name,
                replace_existing=True,
            )
        if catch_up:
            successes = last_successes(self.engine)
            now = dt.datetime.now(dt.UTC)
            overdue = [s for s in specs if is_overdue(s.trigger, successes.get(s.name), now)]
            if overdue:
                overdue.sort(key=_stage_order)
                self.scheduler.add_job(
                    self._catch_up,
                    args=[overdue],
                    id=CATCH_UP,
                    name=CATCH_UP,
                    next_run_time=now,
                    replace_existing=True,
                )

    def _catch_up(self, overdue: list[JobSpec]) -> None:
        """What was missed, once each, in the order data flows: a digest sent on catching up
        covers what the ingest and publish before it caught up."""
        log.info(
            "catching up %d jobs missed while no worker was active",
            len(overdue),
            extra={"jobs": ",".join(spec.name for spec in overdue)},
        )
        for spec in overdue:
            if self._stop.is_set() or not self._active:
                return
            run_job(self.engine, spec)

    def _run(self, spec: JobSpec) -> None:
        run_job(self.engine, spec)


def run_job(engine: Engine, spec: JobSpec) -> JobOutcome | None:
    """Run one job, record it and log one line; a failure is logged, never raised."""
    started = dt.datetime.now(dt.UTC)
    clock = time.monotonic()
    extra: dict[str, object] = {"job": spec.name}
    if spec.partner:
        extra["partner"] = spec.partner
    try:
        _record(engine, spec.name, starting=True, last_started=started)
    except sa.exc.OperationalError as error:  # the store is down: the next run tries again
        log.error("%s not run: %s", spec.name, store_unavailable(error), extra=extra)
        return None
    try:
        outcome = spec.run()
    except SpampotsError as error:
        _finish(engine, spec, "failed", str(error), clock, extra)
        return None
    except sa.exc.OperationalError as error:  # e.g. PostgreSQL restarted during the run
        _finish(engine, spec, "failed", str(store_unavailable(error)), clock, extra)
        return None
    except Exception as error:  # a job must never take the worker down
        _finish(engine, spec, "failed", f"{type(error).__name__}: {error}", clock, extra, exc=True)
        return None
    extra.update(outcome.fields)
    extra.update(outcome.counts)
    _finish(engine, spec, "ok", outcome.message, clock, extra)
    return outcome


def _finish(
    engine: Engine,
    spec: JobSpec,
    status: str,
    message: str,
    clock: float,
    extra: dict[str, object],
    exc: bool = False,
) -> None:
    finished = dt.datetime.now(dt.UTC)
    seconds = time.monotonic() - clock
    extra["seconds"] = round(seconds, 3)
    counts = {k: v for k, v in extra.items() if isinstance(v, int)}
    observe_job(spec.name, spec.partner, status, seconds, counts, finished.timestamp())
    values: dict[str, Any] = {
        "last_finished": finished,
        "last_status": status,
        "last_message": " ".join(message.split())[:2000],
    }
    if status == "ok":
        values["last_success"] = finished
        log.info("%s: %s", spec.name, message, extra=extra)
    else:
        log.error("%s failed: %s", spec.name, " ".join(message.split()), extra=extra, exc_info=exc)
    try:
        _record(engine, spec.name, **values)
    except sa.exc.DBAPIError as error:
        log.warning(
            "could not record the run of %s: %s", spec.name, " ".join(str(error.orig).split())
        )


def job_names(specs: Iterable[JobSpec]) -> list[str]:
    return sorted(spec.name for spec in specs)


def heartbeat_age(settings: Settings) -> float | None:
    """Seconds since a worker using this data folder last ticked; None if none ever did."""
    try:
        return time.time() - (Path(settings.home) / "worker.heartbeat").stat().st_mtime
    except FileNotFoundError:
        return None

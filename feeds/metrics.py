"""Prometheus metrics, shared by every process of one installation.

Each process (the worker, every gunicorn worker of the TAXII server) writes its samples to
files in ``SPAMPOTS_METRICS_DIR``; ``/metrics`` on the TAXII server adds them up. The folder
must be known before ``prometheus_client`` is first imported, which is why the metrics are
made on first use (:func:`metrics`) and commands that run the service call
:func:`use_metrics_dir` before anything else.
"""

from __future__ import annotations

import os
import socket
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ENV = "PROMETHEUS_MULTIPROC_DIR"


def process_identifier() -> str:
    """Names this process's sample files: host name and pid, so that containers sharing the
    folder (each with its own pid 1) never write to the same file."""
    return f"{socket.gethostname()}-{os.getpid()}"


def use_metrics_dir(folder: Path) -> None:
    """Point this process (and those it starts) at the shared metrics folder, after removing
    the files of this host's processes that are gone."""
    folder.mkdir(parents=True, exist_ok=True)
    os.environ[ENV] = str(folder)
    host = socket.gethostname()
    for sample_file in folder.glob(f"*_{host}-*.db"):
        pid = sample_file.stem.rsplit("-", 1)[-1]
        if pid.isdigit() and not _alive(int(pid)):
            sample_file.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass(frozen=True)
class Metrics:
    messages_ingested: Any
    records_quarantined: Any
    publish_runs: Any
    published_objects: Any
    publish_seconds: Any
    taxii_requests: Any
    digests_sent: Any
    job_runs: Any
    last_success: Any


_made: list[Metrics] = []
_making = threading.Lock()


def metrics() -> Metrics:
    """This process's metrics, made on first use. The first requests of a gunicorn worker come
    in on several threads at once: the lock makes the metrics once (a second registration of
    the same names raises DuplicateTimeseries, which failed those requests with a 500)."""
    with _making:
        if not _made:
            _made.append(_make_metrics())
        return _made[0]


def _make_metrics() -> Metrics:
    from prometheus_client import Counter, Gauge, Histogram, values

    if os.environ.get(ENV):
        values.ValueClass = values.MultiProcessValue(process_identifier)  # type: ignore[no-untyped-call]

    return Metrics(
        messages_ingested=Counter("spampots_messages_ingested", "Messages accepted by ingest"),
        records_quarantined=Counter(
            "spampots_records_quarantined", "Records put in quarantine by ingest"
        ),
        publish_runs=Counter("spampots_publish_runs", "Publish runs", ["partner", "status"]),
        published_objects=Counter(
            "spampots_published_objects", "STIX objects published", ["partner"]
        ),
        publish_seconds=Histogram(
            "spampots_publish_duration_seconds",
            "Duration of publish runs",
            ["partner"],
            buckets=(0.1, 0.5, 1, 5, 15, 60, 300, 900, 3600),
        ),
        taxii_requests=Counter(
            "spampots_taxii_requests", "TAXII requests answered", ["partner", "status"]
        ),
        digests_sent=Counter(
            "spampots_digests_sent", "Weekly digests accepted by the SMTP server", ["partner"]
        ),
        job_runs=Counter("spampots_job_runs", "Scheduled job runs", ["job", "status"]),
        last_success=Gauge(
            "spampots_last_success_timestamp_seconds",
            "Unix time of the last successful run of each job",
            ["job"],
            multiprocess_mode="max",
        ),
    )


def exposition() -> tuple[bytes, str]:
    """The text exposition of every process's metrics: (body, content type)."""
    from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
    from prometheus_client.multiprocess import MultiProcessCollector

    metrics()
    if os.environ.get(ENV):
        registry = CollectorRegistry()
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


def process_gone(pid: int) -> None:
    """For gunicorn's child_exit hook: drop a dead worker's live gauges."""
    if os.environ.get(ENV):
        from prometheus_client.multiprocess import mark_process_dead

        mark_process_dead(f"{socket.gethostname()}-{pid}")  # type: ignore[no-untyped-call]


def observe_job(
    name: str,
    partner: str | None,
    status: str,
    seconds: float,
    counts: dict[str, int],
    finished_at: float,
) -> None:
    """Count one scheduled job run, and what it did, in the stage's own metrics."""
    m = metrics()
    m.job_runs.labels(job=name, status=status).inc()
    if status != "ok":
        if name.startswith("publish:") and partner:
            m.publish_runs.labels(partner=partner, status=status).inc()
        return
    m.last_success.labels(job=name).set(finished_at)
    kind = name.split(":", 1)[0]
    if kind == "ingest":
        m.messages_ingested.inc(counts.get("accepted", 0))
        m.records_quarantined.inc(counts.get("quarantined", 0))
    elif kind == "publish" and partner:
        m.publish_runs.labels(partner=partner, status=status).inc()
        m.published_objects.labels(partner=partner).inc(counts.get("objects", 0))
        m.publish_seconds.labels(partner=partner).observe(seconds)
    elif kind == "digest" and partner:
        m.digests_sent.labels(partner=partner).inc(counts.get("sent", 0))

"""``spampots serve``: the TAXII server under gunicorn (threaded workers, one app per worker)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flask import Flask
from gunicorn.app.base import BaseApplication

from feeds.errors import UsageError
from feeds.home import open_store
from feeds.logs import configure_logging
from feeds.metrics import process_gone, use_metrics_dir
from feeds.partners import load_partners
from feeds.settings import Settings

THREADS_PER_WORKER = 4


class _Gunicorn(BaseApplication):  # type: ignore[misc]
    def __init__(self, settings: Settings, options: dict[str, Any]) -> None:
        self._settings = settings
        self._options = options
        super().__init__()

    def load_config(self) -> None:
        for name, value in self._options.items():
            self.cfg.set(name, value)

    def load(self) -> Flask:
        from taxii_server.app import create_app

        return create_app(self._settings)


def _child_exit(_arbiter: Any, worker: Any) -> None:
    process_gone(worker.pid)  # its live gauges leave the sum at /metrics


def serve(
    settings: Settings, host: str | None = None, port: int | None = None, workers: int | None = None
) -> int:
    """Check the store and partners file, then serve until stopped (SIGTERM, Ctrl-C)."""
    host = host or str(settings.taxii_host)
    port = int(settings.taxii_port) if port is None else port
    workers = int(settings.taxii_workers) if workers is None else workers
    if not 1 <= port <= 65535:
        raise UsageError(f"--port {port} is not a port", hint="use 1-65535")
    if workers < 1:
        raise UsageError(f"--workers {workers} is too few", hint="use 1 or more")
    # Fail here, with one clear line, rather than in every worker as it boots.
    open_store(settings).dispose()  # workers open their own connections after the fork
    load_partners(settings.partners)
    configure_logging(settings.log_level, settings.log_format)
    use_metrics_dir(Path(settings.metrics_dir))  # before any worker imports prometheus_client
    bind = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    options = {
        "bind": bind,
        "workers": workers,
        "worker_class": "gthread",
        "threads": THREADS_PER_WORKER,
        "timeout": 120,
        "graceful_timeout": 10,
        "errorlog": "-",
        "loglevel": str(settings.log_level).lower(),
        "proc_name": "spampots-taxii",
        "child_exit": _child_exit,
    }
    _Gunicorn(settings, options).run()
    return 0

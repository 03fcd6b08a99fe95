"""Running the service: the worker alone, or the worker and the TAXII server as one process tree.

``spampots run`` is for a single machine: the TAXII server runs as a child process, the worker
in this one; a signal stops both, and if the server dies the whole tree exits non-zero so that
the supervisor (systemd, a container runtime, a person) restarts it.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from feeds.home import open_store
from feeds.logs import configure_logging
from feeds.metrics import use_metrics_dir
from feeds.settings import Settings
from feeds.worker import Worker

log = logging.getLogger("spampots.service")


def _stop_on_signals(stop: threading.Event) -> None:
    def handler(signum: int, _frame: FrameType | None) -> None:
        log.info("stopping on %s", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def _stop_worker_when(stop: threading.Event, worker: Worker) -> None:
    def wait_then_stop() -> None:
        stop.wait()
        worker.stop()

    threading.Thread(target=wait_then_stop, daemon=True).start()


def make_worker(settings: Settings) -> Worker:
    from feeds.jobs import jobs_for

    return Worker(settings, open_store(settings), jobs_for)


def run_worker(settings: Settings) -> int:
    configure_logging(settings.log_level, settings.log_format)
    use_metrics_dir(Path(settings.metrics_dir))
    worker = make_worker(settings)
    stop = threading.Event()
    _stop_on_signals(stop)
    _stop_worker_when(stop, worker)
    worker.run_forever()
    return 0


def server_command(settings: Settings, extra: Sequence[str] = ()) -> list[str]:
    return [sys.executable, "-m", "feeds.cli", "serve", *extra]


def run_all(settings: Settings, serve_args: Sequence[str] = ()) -> int:
    """The worker here and the TAXII server as a child, until a signal or the server dies."""
    configure_logging(settings.log_level, settings.log_format)
    use_metrics_dir(Path(settings.metrics_dir))
    worker = make_worker(settings)
    stop = threading.Event()
    _stop_on_signals(stop)
    server = subprocess.Popen(server_command(settings, serve_args))
    log.info("TAXII server started", extra={"pid": server.pid, "url": settings.taxii_url})
    outcome = {"code": 0}

    def watch_server() -> None:
        code = server.wait()
        if not stop.is_set():
            log.error("the TAXII server exited with status %s; stopping", code)
            outcome["code"] = 1
            stop.set()

    threading.Thread(target=watch_server, daemon=True).start()
    _stop_worker_when(stop, worker)
    try:
        worker.run_forever()
    finally:
        stop.set()
        if server.poll() is None:
            server.terminate()
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                server.kill()
    return outcome["code"]

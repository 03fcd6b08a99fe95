"""Run a spampots command in this process and SIGKILL it at a chosen point (the crash tests).

    python crash_child.py step N [SPAMPOTS ARGS...]
Counts the steps the command takes, where a kill leaves something behind: every SQL statement
and every COMMIT (before it is sent; the raw message packs' too), every file rename (os.replace,
os.rename) and every SMTP DATA (before the message is sent); dies by SIGKILL just before step N.
N = 0 runs to the end and prints ``steps: <count>`` on stderr: what a clean run takes.

    python crash_child.py serve
The same for many commands, without paying for Python's start and imports each time: reads
one JSON request a line on stdin (``{"step": N, "argv": [...], "env": {...}, "out": PATH}``),
runs each in a forked process (its own connections, killed on its own) whose stdout, stderr and
step count go to PATH.stdout, PATH.stderr and PATH.steps, and answers ``{"code": EXIT}``
(-9 when killed) on stdout.

    python crash_child.py POINT N
Ingest only, at a named point: ``in-chunk`` (inside the Nth chunk's transaction, rows written,
not committed), ``after-chunk`` (right after the Nth chunk committed), ``before-move`` (the Nth
batch is marked done but not yet moved to done/). Settings come from the SPAMPOTS_* environment.
"""

from __future__ import annotations

import json
import os
import signal
import smtplib
import sys
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa

from feeds import cli, ingest, rawstore
from feeds.settings import load_settings


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def at_step(n: int, argv: list[str], steps_file: str | None = None) -> int:
    taken = 0

    def step(*_: Any, **__: Any) -> None:
        nonlocal taken
        taken += 1
        if taken == n:
            die()

    sa.event.listen(sa.engine.Engine, "before_cursor_execute", step)
    sa.event.listen(sa.engine.Engine, "commit", step)

    def counted(call: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            step()
            return call(*args, **kwargs)

        return wrapper

    os.replace = counted(os.replace)
    rawstore.RawPacks._commit = counted(rawstore.RawPacks._commit)  # type: ignore[method-assign]
    os.rename = counted(os.rename)
    smtplib.SMTP.data = counted(smtplib.SMTP.data)  # type: ignore[method-assign]
    code = cli.main(argv)
    print(f"steps: {taken}", file=sys.stderr)
    if steps_file:
        with open(steps_file, "w") as out:
            out.write(str(taken))
    return code


def _import_what_commands_use() -> None:
    import importlib

    for module in (
        "feeds.home",
        "feeds.publish",
        "feeds.deliveries",
        "feeds.digest",
        "feeds.chart",
        "feeds.rollups",
        "feeds.verify",
        "alembic.command",
    ):
        importlib.import_module(module)


def serve() -> None:
    _import_what_commands_use()
    for line in sys.stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            out = request["out"]
            for fd, suffix in ((1, ".stdout"), (2, ".stderr")):
                target = os.open(out + suffix, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
                os.dup2(target, fd)
                os.close(target)
            sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115
            sys.stderr = open(2, "w", closefd=False)  # noqa: SIM115
            os.environ.clear()
            os.environ.update(request["env"])
            code = 70
            try:
                code = at_step(request["step"], request["argv"], out + ".steps")
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
        print(json.dumps({"code": code}), flush=True)


def at_ingest_point(point: str, n: int) -> None:
    seen = {"chunks": 0, "batches": 0}
    run = ingest.ingest_run(load_settings(os.environ))
    if point == "in-chunk":
        store = ingest._Writer.store

        def store_then_die(self: Any, *args: Any) -> Any:
            counts = store(self, *args)
            seen["chunks"] += 1
            if seen["chunks"] == n:
                die()
            return counts

        ingest._Writer.store = store_then_die  # type: ignore[method-assign]
    elif point == "after-chunk":

        def after_chunk(name: str, line: int) -> None:
            seen["chunks"] += 1
            if seen["chunks"] == n:
                die()

        run.on_chunk = after_chunk
    elif point == "before-move":
        move = ingest.IngestRun._move_to_done

        def die_before_move(self: Any, path: Any) -> None:
            seen["batches"] += 1
            if seen["batches"] == n:
                die()
            move(self, path)

        ingest.IngestRun._move_to_done = die_before_move  # type: ignore[method-assign]
    run.run()


def main() -> None:
    if sys.argv[1] == "serve":
        serve()
        return
    point, n = sys.argv[1], int(sys.argv[2])
    if point == "step":
        sys.exit(at_step(n, sys.argv[3:]))
    at_ingest_point(point, n)


if __name__ == "__main__":
    main()

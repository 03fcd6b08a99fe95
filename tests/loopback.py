"""Loopback ports, and ``spampots serve`` run as its own process on one."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import requests


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class ServeProcess:
    url: str
    process: subprocess.Popen[bytes]
    lines: list[str]

    @property
    def output(self) -> str:
        return "".join(self.lines)


@contextlib.contextmanager
def spampots_serve(env: dict[str, str], *options: str) -> Iterator[ServeProcess]:
    """``spampots serve`` on a free loopback port, with ``env`` as its only SPAMPOTS_* settings.

    Ready once gunicorn says it listens on that very port: a free port can be taken by another
    process's server before ours binds it, and that server must never be mistaken for ours.
    """
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "feeds.cli",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            *options,
        ],
        env={**{k: v for k, v in os.environ.items() if not k.startswith("SPAMPOTS_")}, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    lines: list[str] = []
    listening = threading.Event()

    def read_output() -> None:  # always drained, so a chatty server never blocks on its pipe
        assert process.stdout is not None
        for raw in process.stdout:
            line = raw.decode("utf-8", "replace")
            lines.append(line)
            if f"Listening at: {url}" in line:
                listening.set()

    reader = threading.Thread(target=read_output, daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 60
        while not listening.wait(0.1):
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError("spampots serve did not start:\n" + "".join(lines))
        while requests.get(url + "/healthz", timeout=30).status_code != 200:
            assert time.monotonic() < deadline, "spampots serve is not healthy"
            time.sleep(0.1)
        yield ServeProcess(url, process, lines)
    finally:
        process.terminate()
        process.wait(timeout=30)
        reader.join(timeout=30)
        if process.stdout is not None:
            process.stdout.close()

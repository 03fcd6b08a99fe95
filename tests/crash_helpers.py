"""Running spampots commands through tests/crash_child.py: a clean run that counts its steps,
and runs SIGKILLed at seeded random steps (reproducible: the same seed, the same points)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


def child(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """tests/crash_child.py with ``args``, the SPAMPOTS_* settings of ``env`` and no others."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("SPAMPOTS_")}
    return subprocess.run(
        [sys.executable, str(HERE / "crash_child.py"), *args],
        env={**base, **env},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@dataclass(frozen=True)
class Run:
    code: int  # -9 when killed
    steps: int | None  # steps taken, when it ran to its end
    stdout: str
    stderr: str


class Crasher:
    """A crash_child.py server: each run is a forked process of one that imported it all."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.runs = 0
        self.process = subprocess.Popen(
            [sys.executable, str(HERE / "crash_child.py"), "serve"],
            cwd=REPO,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def run(self, env: dict[str, str], argv: list[str], step: int = 0) -> Run:
        """``argv`` SIGKILLed just before its step ``step`` (0: run to the end)."""
        assert self.process.stdin is not None and self.process.stdout is not None
        self.runs += 1
        out = self.folder / f"run{self.runs}"
        base = {k: v for k, v in os.environ.items() if not k.startswith("SPAMPOTS_")}
        request = {"step": step, "argv": argv, "env": {**base, **env}, "out": str(out)}
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        code = int(json.loads(self.process.stdout.readline())["code"])
        steps_file = out.with_name(out.name + ".steps")
        steps = int(steps_file.read_text()) if steps_file.exists() else None
        stdout = out.with_name(out.name + ".stdout").read_text()
        stderr = out.with_name(out.name + ".stderr").read_text()
        return Run(code, steps, stdout, stderr)

    def counted(self, env: dict[str, str], argv: list[str]) -> tuple[Run, int]:
        """The command run to its end, and the number of steps it took."""
        done = self.run(env, argv)
        assert done.steps is not None, done.stderr
        return done, done.steps

    def killed_runs(
        self,
        env: dict[str, str],
        argv: list[str],
        gaps: list[int],
        check: Callable[[], None] | None = None,
    ) -> list[Run]:
        """One run per gap, SIGKILLed at that step; ``check`` looks at what each left."""
        runs = []
        for gap in gaps:
            done = self.run(env, argv, gap)
            assert done.code in (-signal.SIGKILL, 0, 1), done.stderr
            runs.append(done)
            if check is not None:
                check()
        return runs

    def close(self) -> None:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.close()
        self.process.wait(timeout=60)
        self.process.stdout.close()


def kill_gaps(seed: int, steps: int, count: int = 20) -> list[int]:
    """``count`` distinct random points in a run of ``steps`` steps, as the steps from one
    kill to the next: killed runs in a row, each going on where the one before stopped, reach
    those points (about: a rerun repeats what the kill rolled back)."""
    points = sorted(random.Random(seed).sample(range(1, steps + 1), count))
    return [b - a for a, b in zip([0, *points], points, strict=False)]

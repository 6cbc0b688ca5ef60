"""``alb serve`` as real processes for tests: start, read their output, stop."""

from __future__ import annotations

import os
import queue
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ALB = str(Path(sys.executable).parent / "alb")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without ALB_ / OLLAMA_ settings, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ALB_", "OLLAMA_"))}
    env.update(extra)
    return env


class Proc:
    """A child process whose output is read line by line on a thread."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.p = subprocess.Popen(
            args,
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.output: list[str] = []
        self._pump_thread = threading.Thread(target=self._pump, daemon=True)
        self._pump_thread.start()

    def _pump(self) -> None:
        assert self.p.stdout is not None
        with self.p.stdout:  # the pipe is closed at EOF: the process has ended
            for line in self.p.stdout:
                self.output.append(line)
                self.lines.put(line)

    def wait_line(self, prefix: str, timeout: float = 20) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.1)
            except queue.Empty:
                if self.p.poll() is not None:
                    break
                continue
            if line.startswith(prefix):
                return line.strip()
        raise AssertionError(f"no line starting {prefix!r}; output:\n{''.join(self.output)}")

    def stop(self) -> None:
        """Kill the process if it still runs, and wait for the pump to close its pipe."""
        if self.p.poll() is None:
            self.p.kill()
        self.p.wait(5)
        self._pump_thread.join(5)

"""Service processes for tests: `vitprune serve` and `vitprune worker` as real subprocesses, logs in files."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

FAST = {"VITPRUNE_POLL_S": "0.2", "VITPRUNE_HEARTBEAT_S": "1", "VITPRUNE_GRACE_S": "3", "VITPRUNE_LEASE_S": "5"}
"""Short periods so that dead workers are noticed in seconds."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def service_env(db_url: str, home: Path, roots: list[Path]) -> dict[str, str]:
    return os.environ | FAST | {
        "VITPRUNE_DB_URL": db_url,
        "VITPRUNE_HOME": str(home),
        "VITPRUNE_ROOTS": json.dumps([str(r) for r in roots]),
    }


class Process:
    """A `vitprune ...` subprocess; stdout and stderr go to a file (a full pipe would block it)."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        with log.open("a") as out:
            self.process = subprocess.Popen([sys.executable, "-m", "vitprune", *args], env=env, stdout=out, stderr=out)

    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL: no clean-up of any kind, as when a machine dies."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        if self.alive():
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()

    def report(self, timeout: float = 120) -> dict:
        """The JSON line a worker prints when it exits."""
        code = self.process.wait(timeout=timeout)
        text = self.log.read_text()
        assert code == 0, f"exited with {code}:\n{text}"
        return json.loads(text.strip().splitlines()[-1])


class Service(Process):
    """`vitprune serve` on a free port, waited for until healthy."""

    def __init__(self, env: dict[str, str], log: Path, *options: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        super().__init__(["serve", "--port", str(self.port), *options], env, log)
        self.wait_healthy()

    def wait_healthy(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.alive(), f"the API exited:\n{self.log.read_text()}"
            try:
                if httpx.get(f"{self.url}/api/health").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.3)
        pytest.fail(f"the API did not answer in {timeout} s:\n{self.log.read_text()}")

    def get(self, path: str, **kwargs) -> httpx.Response:
        return httpx.get(f"{self.url}{path}", timeout=30, **kwargs)

    def post(self, path: str, **kwargs) -> httpx.Response:
        return httpx.post(f"{self.url}{path}", timeout=60, **kwargs)


def wait_until(condition, what: str, timeout: float = 180, processes: tuple[Process, ...] = ()) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        for process in processes:
            assert process.alive(), f"{process.log.name} exited before {what}:\n{process.log.read_text()}"
        assert time.monotonic() < deadline, f"no {what} after {timeout} s"
        time.sleep(0.2)

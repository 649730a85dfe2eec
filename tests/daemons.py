"""The daemon as a process for the tests: `kiosk run` on mock pins with a profile pointing at a
simulated ccTalk acceptor's pseudo-terminal (sim.bench_kiosk.profile): fixtures `daemons` and
`device`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from sim.cctalk_device import SimCcTalkAcceptor

TIMEOUT_S = 20.0


def run(config: Path, **extra: str) -> subprocess.Popen[str]:
    env = {**os.environ, "GPIOZERO_PIN_FACTORY": "mock", "PYTHONWARNINGS": "ignore", **extra}
    return subprocess.Popen(
        [sys.executable, "-m", "kiosk.cli", "run", "-c", str(config)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


class Daemons:
    def __init__(self) -> None:
        self.started: list[subprocess.Popen[str]] = []

    def __call__(self, config: Path, **env: str) -> subprocess.Popen[str]:
        self.started.append(run(config, **env))
        return self.started[-1]

    def stop(self, daemon: subprocess.Popen[str], signum: int = signal.SIGTERM) -> str:
        daemon.send_signal(signum)
        output, _ = daemon.communicate(timeout=TIMEOUT_S)
        return output


@pytest.fixture
def daemons() -> Iterator[Daemons]:
    made = Daemons()
    yield made
    for daemon in made.started:
        if daemon.poll() is None:
            daemon.kill()
            daemon.communicate()


@pytest.fixture
def device() -> Iterator[SimCcTalkAcceptor]:
    acceptor = SimCcTalkAcceptor(echo=False)
    yield acceptor
    acceptor.close()

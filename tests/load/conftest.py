"""Helpers for tests that run the service as a real process (`python -m service`) on 127.0.0.1.

`ServiceProcess` starts it with TIPO_* settings (on a given port, or a free one), waits until /health/ready answers 200, and finds the
vLLM EngineCore child process so a test can freeze (SIGSTOP) or kill (SIGKILL) it. Every process a
test starts is stopped at the end, even when the test fails.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.api.conftest import free_port
from tests.shared import wait_until_ok

REPO_ROOT = Path(__file__).resolve().parents[2]


class ServiceProcess:
    def __init__(self, settings: dict[str, object], log_path: Path, port: int | None = None):
        self.port = port or free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "TIPO_HOST": "127.0.0.1", "TIPO_PORT": str(self.port), "TIPO_LOG_LEVEL": "info",
               "VLLM_CPU_KVCACHE_SPACE": "1"}
        env.update({f"TIPO_{key.upper()}": str(value) for key, value in settings.items()})
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.process = subprocess.Popen([sys.executable, "-m", "service"], cwd=REPO_ROOT, env=env,
                                        stdout=self._log, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout_s: float = 240) -> None:
        self._log.flush()
        wait_until_ok(f"{self.base_url}/health/ready", self.process, timeout_s, self.log_path, "the service")

    def engine_core(self) -> psutil.Process:
        """vLLM's EngineCore child process (it names itself VLLM::EngineCore)."""
        for child in psutil.Process(self.process.pid).children(recursive=True):
            try:
                if "EngineCore" in child.name() or "EngineCore" in " ".join(child.cmdline()):
                    return child
            except psutil.NoSuchProcess:
                continue
        raise RuntimeError("no EngineCore child process found")

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-6000:]

    def stop(self) -> None:
        """Kill what is left: the service and its children (a frozen EngineCore is resumed first)."""
        try:
            family = psutil.Process(self.process.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            family = []
        for child in family:
            try:
                child.send_signal(signal.SIGCONT)
            except psutil.NoSuchProcess:
                pass
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)
        for child in family:
            try:
                child.kill()
            except psutil.NoSuchProcess:
                pass
        self._log.close()


@pytest.fixture
def service_process(tmp_path: Path) -> Iterator:
    """`service_process(**settings)` -> a started (not yet ready) ServiceProcess; stopped at the end."""
    started: list[ServiceProcess] = []

    def start(port: int | None = None, **settings) -> ServiceProcess:
        service = ServiceProcess(settings, tmp_path / f"service-{len(started)}.log", port=port)
        started.append(service)
        return service

    yield start
    for service in started:
        service.stop()

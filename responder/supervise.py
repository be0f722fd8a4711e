"""`responder serve` with RESPONDER_WORKER=process (the default): the gunicorn server and
the queue worker as two child processes of this one.

The worker costs about half as much CPU per event as the intake does per request; in the
serving process it would share the GIL and halve the rate Falcosidekick can post at. As a
process of its own it runs on another core, and this parent stops both together, restarts
a worker that dies, and points both at one directory for their Prometheus values, so a
scrape of the server's /metrics includes the worker's action outcomes.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from .logs import configure_logging
from .metrics import MULTIPROC_ENV
from .settings import Settings

logger = logging.getLogger(__name__)
# Both children stop within this (the Deployment's grace period is 60 s): the server
# finishes its requests, then the worker acts on what is due (up to 20 s) and tells Slack.
STOP_SECONDS = 50.0
RESTART_PAUSE = (1.0, 30.0)  # first and longest wait before restarting a dead worker
STEADY_SECONDS = 60.0  # a worker that lived this long died on its own, not in a crash loop
# Its metrics go to the shared directory, which the server's /metrics reads: no port.
WORKER_COMMAND = ("work", "--metrics-port", "0")


class Supervisor:
    def __init__(self, settings: Settings, env: dict[str, str]):
        self.settings = settings
        metrics_dir = metrics_directory(settings)
        self.env = {**env, "RESPONDER_WORKER": "off", MULTIPROC_ENV: str(metrics_dir)}
        self.metrics_dir = metrics_dir
        self._stop = threading.Event()

    def run(self) -> int:
        configure_logging(self.settings.log.format, self.settings.log.level)
        # Values of an earlier run's processes must not be added to this run's.
        shutil.rmtree(self.metrics_dir, ignore_errors=True)
        self.metrics_dir.mkdir(parents=True)
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: self._stop.set())
        try:
            return self._supervise()
        finally:
            shutil.rmtree(self.metrics_dir, ignore_errors=True)  # memory, not disk

    def _supervise(self) -> int:
        server = self._spawn("serve")
        # The worker starts once the server listens: a bad table or setting then stops
        # the server alone, with its errors printed once, and its exit status is ours.
        if not self._wait_listening(server):
            return server.returncode if server.returncode is not None else 0
        worker, started = self._spawn(*WORKER_COMMAND), time.monotonic()
        pause = RESTART_PAUSE[0]
        while not self._stop.wait(0.5):
            if server.poll() is not None:
                logger.error("server exited with status %s; stopping", server.returncode)
                break
            if worker.poll() is not None:
                if time.monotonic() - started > STEADY_SECONDS:
                    pause = RESTART_PAUSE[0]
                worker, pause = self._restart(worker, pause)
                started = time.monotonic()
        # The server first, so the worker, last to go, acts on everything it took in.
        deadline = time.monotonic() + STOP_SECONDS
        _stop_child(server, "server", deadline)
        _stop_child(worker, "worker", deadline)
        if self._stop.is_set():
            return server.returncode or 0
        return server.returncode or 1  # the server died on its own: say so to whoever runs us

    def _wait_listening(self, server: subprocess.Popen) -> bool:
        """True once the server accepts connections; False if it exited or we were told
        to stop first (then it is stopped)."""
        host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(
            self.settings.intake.host, self.settings.intake.host)
        while not self._stop.is_set():
            if server.poll() is not None:
                return False
            try:
                socket.create_connection((host, self.settings.intake.port), timeout=1).close()
                return True
            except OSError:
                self._stop.wait(0.1)
        _stop_child(server, "server", time.monotonic() + STOP_SECONDS)
        return False

    def _spawn(self, *command: str) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "responder.cli", *command],
                                env=self.env)

    def _restart(self, dead: subprocess.Popen, pause: float) -> tuple[subprocess.Popen, float]:
        """Events wait in the spool and journal meanwhile; nothing is lost."""
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(dead.pid, str(self.metrics_dir))
        logger.error("queue worker exited with status %s; restarting it in %.0f s",
                     dead.returncode, pause)
        if self._stop.wait(pause):
            return dead, pause
        return self._spawn(*WORKER_COMMAND), min(pause * 2, RESTART_PAUSE[1])


def metrics_directory(settings: Settings) -> Path:
    """The processes' shared metrics files, in memory: prometheus-client maps them, and a
    mapped file that cannot grow on a full disk kills its process with SIGBUS, so they
    must not share the state volume (which fills with the queue). Named after the state
    directory: one per service, cleared at each start, never one per crash."""
    base = settings.storage.metrics_dir or ("/dev/shm" if os.path.isdir("/dev/shm")
                                    else tempfile.gettempdir())
    state = str(Path(settings.storage.state_dir).expanduser().resolve())
    return Path(base) / f"falco-responder-metrics-{hashlib.sha256(state.encode()).hexdigest()[:12]}"


def _stop_child(proc: subprocess.Popen, name: str, deadline: float) -> None:
    """SIGTERM (a graceful stop: the action in hand finishes, Slack gets what it is owed),
    then SIGKILL if it is still there at `deadline`."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            logger.error("%s did not stop in time; killing it", name)
            proc.kill()
            proc.wait()

"""A real mosquitto on a free port, which tests may kill (-9), stop and restart."""

from __future__ import annotations

import getpass
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 10.0, host: str = "127.0.0.1") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise TimeoutError(f"nothing listening on {host}:{port}")


@dataclass
class Mosquitto:
    workdir: Path
    port: int = field(default_factory=free_port)
    extra_conf: str = ""
    persistent: bool = False
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> Mosquitto:
        exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        conf = self.workdir / "mosquitto.conf"
        listener = self.extra_conf or f"listener {self.port} 127.0.0.1\nallow_anonymous true\n"
        # Unlimited queues: a subscriber that is briefly away must not lose messages to the
        # broker's default 1,000-message queue limit. Persistence keeps the test platform's
        # session (and its subscription) across broker kills.
        store = (
            f"persistence true\npersistence_location {self.workdir}/\nautosave_interval 1\n"
            if self.persistent
            else "persistence false\n"
        )
        conf.write_text(
            f"user {getpass.getuser()}\n{store}"
            "max_queued_messages 0\nmax_inflight_messages 0\nqueue_qos0_messages true\n"
            f"log_dest stderr\nlog_type error\n{listener}"
        )
        log = self.workdir / "mosquitto.log"
        with log.open("ab") as out:  # the broker has its own copy of the descriptor
            self.proc = subprocess.Popen([exe, "-c", str(conf)], stdout=out, stderr=out)
        try:
            wait_port(self.port)
        except TimeoutError:
            self.kill()  # not left running after the test that could not use it
            raise TimeoutError(f"mosquitto did not listen: {log.read_text().strip()}") from None
        return self

    def kill(self) -> None:
        """Crash the broker: no goodbye to clients, in-flight PUBACKs are lost."""
        if self.proc is not None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
            self.proc = None

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None

    def restart(self) -> None:
        self.kill()
        self.start()

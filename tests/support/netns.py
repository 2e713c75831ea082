"""A second host on this machine: a network namespace behind a veth pair, whose cable the test
can cut (the link goes down, packets vanish, no reset is ever sent) and mend. For faults a
relay in user space cannot make: TCP keepalive probes are answered by the kernel whatever a
process does."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pytest


@dataclass(frozen=True)
class Host:
    name: str
    address: str
    _cable: str

    def run_python(self, code: str, *args: str) -> subprocess.Popen[bytes]:
        """A Python process on that host."""
        command = ["ip", "netns", "exec", self.name, sys.executable, "-c", code, *args]
        return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)

    def cut(self) -> None:
        _ip("link", "set", self._cable, "down")

    def mend(self) -> None:
        _ip("link", "set", self._cable, "up")


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@contextmanager
def other_host() -> Iterator[Host]:
    """Skips the test where namespaces cannot be made (not root, no iproute2)."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("needs root and iproute2 for a network namespace")
    tag = f"{os.getpid() % 100_000}"
    ns, near, far = f"gwt{tag}", f"gwh{tag}", f"gwn{tag}"
    subnet = 16 + os.getpid() % 200
    try:
        _ip("netns", "add", ns)
    except subprocess.CalledProcessError as exc:
        pytest.skip(f"cannot create a network namespace: {exc.stderr.decode().strip()}")
    try:
        _ip("link", "add", near, "type", "veth", "peer", "name", far)
        _ip("link", "set", far, "netns", ns)
        _ip("addr", "add", f"10.231.{subnet}.1/30", "dev", near)
        _ip("link", "set", near, "up")
        _ip("netns", "exec", ns, "ip", "addr", "add", f"10.231.{subnet}.2/30", "dev", far)
        _ip("netns", "exec", ns, "ip", "link", "set", far, "up")
        yield Host(ns, f"10.231.{subnet}.2", near)
    finally:
        subprocess.run(["ip", "link", "del", near], check=False, capture_output=True)
        subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)

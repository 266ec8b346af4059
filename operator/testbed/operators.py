"""`libvirt-operator run` for one node, as a process of its own."""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from testbed.clients import Api
from testbed.hosts import QEMU_URI
from testbed.net import free_port
from testbed.polling import wait_for as poll

OPERATOR = [sys.executable, "-m", "libvirt_operator"]


class OperatorProcess:
    """`libvirt-operator run` for one node in a subprocess."""

    def __init__(self, api: Api, node: str, storage: Path, images: Path, *extra: str,
                 libvirt_uri: str = QEMU_URI) -> None:
        self.api = api
        self.node = node
        self.storage = storage
        self.images = images
        self.extra = list(extra)
        self.libvirt_uri = libvirt_uri
        self.health_port = free_port()
        self.metrics_port = free_port()
        self.log = api.workdir / f"operator-{node}-{uuid.uuid4().hex[:4]}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, *, wait_ready: bool = True) -> OperatorProcess:
        self.health_port = free_port()
        self.metrics_port = free_port()
        args = [*OPERATOR, "run", "--kubeconfig", str(self.api.kubeconfig), "--node-name", self.node,
                "--libvirt-uri", self.libvirt_uri, "--storage-dir", str(self.storage),
                "--image-dir", str(self.images), "--health-port", str(self.health_port),
                "--metrics-port", str(self.metrics_port), "--shutdown-timeout", "3",
                "--stopped-event-delay", "0.3", "--sync-interval", "5", "--shared-storage", "false",
                "--reconnect-max-backoff", "2", "--log-level", "DEBUG", *self.extra]
        with open(self.log, "ab") as log:
            log.write(f"\n=== start {' '.join(args)}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT,
                                         env={**os.environ, **self.api.operator_env()})
        if wait_ready:
            self.wait_ready()
        return self

    def readyz(self) -> int:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.health_port}/readyz", timeout=2) as resp:
                return int(resp.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)

    def wait_ready(self, timeout: float = 60.0) -> None:
        def ready() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"operator {self.node} exited with {self.proc.returncode}:\n{self.tail()}")
            return self.readyz() == 200
        try:
            poll(ready, timeout=timeout, interval=0.1, what=f"operator {self.node} to be ready")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.tail()}") from None

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as resp:
            return str(resp.read().decode())

    def metric(self, name: str, **labels: str) -> float:
        """The sum of the samples of one of its metrics whose labels include ``labels``."""
        wanted = [f'{key}="{value}"' for key, value in labels.items()]
        return sum(float(line.split()[-1]) for line in self.metrics().splitlines()
                   if line.startswith(name) and line[len(name)] in " {" and all(w in line for w in wanted))

    def tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@contextmanager
def operators(*procs: OperatorProcess) -> Iterator[tuple[OperatorProcess, ...]]:
    try:
        for proc in procs:
            proc.start()
        yield procs
    finally:
        for proc in procs:
            proc.stop()

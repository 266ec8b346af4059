"""The project's API emulator (`python -m kube_emulator`) in a process of its own, as a `clients.Api`.

It starts in a second and needs no build; its request counts and faults are its own debug endpoints.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from libvirt_operator.api.constants import CRD_PATH, MIGRATION_CRD_PATH
from testbed.net import free_port
from testbed.polling import wait_for as poll


class EmulatorApi:
    kind = "emulator"

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.kubeconfig = workdir / "kubeconfig"
        self.admin_kubeconfig = self.kubeconfig
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = workdir / "api.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "kube_emulator", "--kubeconfig", str(self.kubeconfig),
                                          "--port", str(self.port), "--crd", str(CRD_PATH),
                                          "--crd", str(MIGRATION_CRD_PATH)],
                                         stdout=log, stderr=subprocess.STDOUT)
        poll(lambda: self.kubeconfig.exists() and self._get("/version"), timeout=30, what="the API emulator")

    def operator_env(self) -> dict[str, str]:
        return {}

    def _get(self, path: str) -> Any:
        with urllib.request.urlopen(self.url + path, timeout=5) as resp:
            return json.loads(resp.read())

    def _post(self, path: str, body: Mapping[str, Any]) -> Any:
        req = urllib.request.Request(self.url + path, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=5) as resp:
            return json.loads(resp.read() or b"{}")

    def requests(self) -> dict[tuple[str, str], int]:
        return {(r["verb"], r["resource"]): int(r["count"]) for r in self._get("/_emulator/requests")}

    def reset_counts(self) -> None:
        self._post("/_emulator/reset-counts", {})

    def inject_fault(self, *, status: int, verb: str | None = None, resource: str | None = None,
                     count: int = 1) -> None:
        self._post("/_emulator/faults", {"status": status, "verb": verb, "resource": resource, "count": count})

    def freeze(self) -> None:
        """Unreachable without refusing connections: requests hang until thawed (like a partition)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

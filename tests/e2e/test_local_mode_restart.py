"""Restarting local mode (`libvirt-operator dev`) on the real libvirtd leaves every guest as it was.

The API emulator keeps its objects in a state file, so the operator that comes back finds its
VirtualMachines and adopts their running domains instead of destroying them as orphans.
"""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.harness import OPERATOR, QEMU_URI, ApiServer, Cluster, Host, free_port, poll, vm_manifest

GUESTS = ("restart-a", "restart-b", "restart-c")
# What the operator itself decided about a guest; a restart that adopts it must change none of it.
KEPT_STATUS = ("phase", "powerState", "domainName", "domainUUID", "nodeName", "restarts", "startedAt", "reason")


class LocalMode:
    """`libvirt-operator dev` on qemu:///system, started and stopped (SIGTERM) as a user would."""

    def __init__(self, workdir: Path, node: str, dirs: tuple[Path, Path]) -> None:
        self.workdir = workdir
        self.kubeconfig = workdir / "kubeconfig"
        self.state_file = workdir / "api-state.json"
        self.log = workdir / "dev.log"
        self.args = [*OPERATOR, "dev", "--kubeconfig", str(self.kubeconfig), "--libvirt-uri", QEMU_URI,
                     "--node-name", node, "--storage-dir", str(dirs[0]), "--image-dir", str(dirs[1]),
                     "--state-file", str(self.state_file), "--shutdown-timeout", "3"]
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.kubeconfig.unlink(missing_ok=True)
        args = [*self.args, "--health-port", str(free_port()), "--metrics-port", str(free_port())]
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
        poll(self.kubeconfig.exists, timeout=60, what="local mode's kubeconfig")

    def stop(self) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise
        return int(self.proc.returncode)

    def tail(self, lines: int = 80) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


@pytest.fixture
def local_mode(tmp_path: Path, node_name: str, dirs: tuple[Path, Path], host: Host) -> Iterator[LocalMode]:
    mode = LocalMode(tmp_path, node_name, dirs)
    yield mode
    if mode.proc is not None and mode.proc.poll() is None:
        mode.stop()


def kept(status: dict[str, Any]) -> dict[str, Any]:
    return {key: status.get(key) for key in KEPT_STATUS}


def test_restarting_local_mode_keeps_every_guest_running_in_the_same_qemu_process(
        local_mode: LocalMode, node_name: str, host: Host, kubectl_bin: str) -> None:
    local_mode.start()
    cluster = Cluster(ApiServer(local_mode.workdir), kubectl_bin)  # only the client helpers, on its kubeconfig
    for name in GUESTS:
        cluster.apply(vm_manifest(name, node_name, memory="32Mi"))
    before = {name: cluster.wait_phase(name, "Running", timeout=120) for name in GUESTS}
    pids = {name: host.qemu_pid(before[name]["domainName"]) for name in GUESTS}
    cluster.close()
    assert local_mode.stop() == 0, local_mode.tail()

    local_mode.start()
    cluster = Cluster(ApiServer(local_mode.workdir), kubectl_bin)
    try:
        for name in GUESTS:
            after = cluster.wait_phase(name, "Running", timeout=120)
            assert kept(after) == kept(before[name]), local_mode.tail()
            assert host.qemu_pid(after["domainName"]) == pids[name]
            assert host.state(after["domainUUID"]) == 1  # VIR_DOMAIN_RUNNING
        # The restarted operator's start-up scan adopted every domain: none was taken for an orphan.
        def scans() -> list[str]:
            return [line for line in local_mode.log.read_text(errors="replace").splitlines()
                    if "start-up scan of" in line and f" on {node_name}:" in line]
        poll(lambda: len(scans()) == 2, timeout=60, what="the start-up scan of the restarted operator")
        assert f"{len(GUESTS)} owned here" in scans()[-1] and " 0 orphaned" in scans()[-1], scans()
        for name in GUESTS:
            assert host.qemu_pid(cluster.status(name)["domainName"]) == pids[name]
    finally:
        cluster.close()

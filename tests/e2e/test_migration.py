"""Live migration (issue 16) between two real hypervisor hosts: each its own libvirtd + virtlogd in
namespaces of its own (testbed/hypervisors.py), each with its own operator process against the real API
server, and a VirtualMachineMigration moving a running guest from one to the other, with shared storage
and with block migration of its disk; and the real Debian guest (hack/guest-image.sh) with shared storage,
its boot id and uptime read inside it through its guest agent before and after (testbed/guest_agent.py)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import libvirt
import pytest

from libvirt_operator.api.constants import GROUP, MIGRATING_ANNOTATION, MIGRATION_PLURAL, VERSION
from libvirt_operator.api.status import detail_name, event_name
from libvirt_operator.hypervisor import event_loop
from testbed.clients import vm_manifest as base_vm_manifest
from testbed.control_plane import ControlPlane
from testbed.guest_agent import BootClock, agent_of, boot_clock
from testbed.hypervisors import HypervisorHosts, NamespacedHost, small_filesystem
from tests.conftest import API_KIND, REPO, report_line
from tests.e2e.conftest import NODE_PREFIX
from tests.e2e.harness import OPERATOR, Api, Cluster, OperatorProcess, RealApi, poll, unique

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not all(shutil.which(tool) for tool in ("unshare", "nsenter", "ip", "libvirtd")),
    reason="needs root, unshare, nsenter, ip and libvirtd (hypervisor hosts in namespaces)")


# An operator identity (ServiceAccount, RBAC, namespace) of this module's own: other sessions on the shared
# control plane render the e2e identity's RBAC from their own chart, which may not grant migrations yet.
IDENTITY = "lvo-e2e-migration"
NS = IDENTITY  # a reserved identity's VMs live in its namespace


@pytest.fixture(scope="session")
def migration_plane() -> ControlPlane:
    if API_KIND != "real":
        pytest.skip(f"LVO_API={API_KIND}: live migration is tested on the real control plane")
    return ControlPlane(identity=IDENTITY).up()


@pytest.fixture
def api(tmp_path: Path, migration_plane: ControlPlane) -> Iterator[Api]:
    server = RealApi(tmp_path, migration_plane, node_prefix=NODE_PREFIX)
    server.start()
    yield server
    server.stop()


class MigrationCluster(Cluster):
    """The cluster as the tests see it, in the identity's namespace by default."""

    def get(self, name: str, namespace: str = NS) -> dict[str, Any] | None:
        return super().get(name, namespace)

    def status(self, name: str, namespace: str = NS) -> dict[str, Any]:
        return super().status(name, namespace)

    def patch_spec(self, name: str, spec: Mapping[str, Any], namespace: str = NS) -> None:
        super().patch_spec(name, spec, namespace)

    def wait_phase(self, name: str, phase: str, *, timeout: float = 60.0, namespace: str = NS,
                   **fields: Any) -> dict[str, Any]:
        return super().wait_phase(name, phase, timeout=timeout, namespace=namespace, **fields)

    def events_for(self, name: str, namespace: str = NS) -> list[dict[str, Any]]:
        return super().events_for(name, namespace)

    def event_reasons(self, name: str, namespace: str = NS) -> list[str]:
        return super().event_reasons(name, namespace)


@pytest.fixture
def cluster(api: Api, kubectl_bin: str) -> Iterator[Cluster]:
    c = MigrationCluster(api, kubectl_bin)
    yield c
    c.close()


def vm_manifest(name: str, node: str, **spec: Any) -> dict[str, Any]:
    return base_vm_manifest(name, node, namespace=NS, **spec)


class EventLog:
    """Every lifecycle event of both hosts' libvirtd, in order, as (host, type, detail, domain uuid)."""

    def __init__(self, hosts: HypervisorHosts) -> None:
        event_loop.ensure_running()
        self.events: list[tuple[str, str, str, str]] = []
        self.lock = threading.Lock()
        self.conns: list[libvirt.virConnect] = []
        for host in hosts:
            conn = host.open()
            conn.domainEventRegisterAny(None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, self._callback, host.name)
            self.conns.append(conn)

    def _callback(self, _conn: Any, dom: Any, event: int, detail: int, host: str) -> None:
        with self.lock:
            self.events.append((host, event_name(event), detail_name(event, detail), dom.UUIDString()))

    def of(self, host: str, uid: str) -> list[str]:
        with self.lock:
            return [f"{etype}/{detail}" for name, etype, detail, dom in self.events if name == host and dom == uid]

    def close(self) -> None:
        for conn in self.conns:
            conn.close()


@pytest.fixture
def hosts(node_name: str) -> Iterator[HypervisorHosts]:
    hypervisors = HypervisorHosts([f"{node_name}-a", f"{node_name}-b"])
    with hypervisors:
        yield hypervisors
    assert hypervisors.leftovers() == []  # no process, namespace (with its mounts) or veth left behind


@pytest.fixture
def work_dir() -> Iterator[Path]:
    base = Path(tempfile.mkdtemp(prefix="lvo-migration-", dir="/var/tmp"))
    base.chmod(0o755)
    yield base
    shutil.rmtree(base, ignore_errors=True)


@dataclass
class TwoNodes:
    source: NamespacedHost
    target: NamespacedHost
    operators: dict[str, OperatorProcess]
    storage: dict[str, Path]
    images: dict[str, Path]
    events: EventLog


@pytest.fixture(params=["shared", "block"])
def two_nodes(request: pytest.FixtureRequest, api: Api, cluster: Cluster, hosts: HypervisorHosts,
              work_dir: Path) -> Iterator[TwoNodes]:
    # "slow": a bandwidth limit makes the migration last long enough to act on it while it runs. "images":
    # one image directory for both nodes (nodes whose image directories hold the same files, as a real
    # guest's kernel, initrd and base image must be where the definition names them on either node).
    shared, slow = request.param.startswith("shared"), request.param.endswith("slow")
    one_image_dir = request.param.endswith("images")
    source, target = hosts.hosts
    names = [source.name, target.name]
    for name in names:  # Nodes without a kubelet: the operators publish their readiness and migration URI
        cluster.kubectl("create", "-f", "-", input_text=json.dumps(
            {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}}))
    operators: dict[str, OperatorProcess] = {}
    storage: dict[str, Path] = {}
    images: dict[str, Path] = {}
    events = EventLog(hosts)
    try:
        for host in (source, target):
            storage[host.name] = work_dir / ("disks" if shared else f"disks-{host.name}")
            images[host.name] = work_dir / ("images" if one_image_dir else f"images-{host.name}")
            storage[host.name].mkdir(exist_ok=True)
            images[host.name].mkdir(exist_ok=True)
            operators[host.name] = OperatorProcess(api, host.name, storage[host.name], images[host.name],
                                                   "--shared-storage", "auto", "--migration-uri", host.migration_uri,
                                                   *(["--migration-bandwidth", "1"] if slow else []),
                                                   libvirt_uri=host.uri)
        for proc in operators.values():
            proc.start()
        yield TwoNodes(source, target, operators, storage, images, events)
    finally:
        for proc in operators.values():
            proc.stop()
        events.close()
        cluster.kubectl("delete", MIGRATION_PLURAL, "--all", "-n", NS, "--ignore-not-found", "--wait=false",
                        check=False)
        cluster.kubectl("delete", "node", *names, "--ignore-not-found")


def migration_manifest(name: str, vm: str, target: str) -> dict[str, Any]:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "VirtualMachineMigration",
            "metadata": {"name": name, "namespace": NS}, "spec": {"vmName": vm, "targetNode": target}}


def get_migration(cluster: Cluster, name: str) -> dict[str, Any]:
    found: dict[str, Any] = cluster.custom.get_namespaced_custom_object(GROUP, VERSION, NS, MIGRATION_PLURAL,
                                                                        name)
    return found


def domain_active(host: NamespacedHost, uid: str) -> bool | None:
    """True/False: the domain exists there (running or not); None: no such domain on the host."""
    conn = host.open()
    try:
        try:
            return bool(conn.lookupByUUIDString(uid).isActive())
        except libvirt.libvirtError:
            return None
    finally:
        conn.close()


def test_a_running_vm_is_live_migrated_to_the_other_node_and_its_guest_is_never_restarted(
        cluster: Cluster, two_nodes: TwoNodes, request: pytest.FixtureRequest) -> None:
    source, target = two_nodes.source, two_nodes.target
    block = two_nodes.storage[source.name] != two_nodes.storage[target.name]
    name, migration = unique("mig"), unique("to-b")
    cluster.apply(vm_manifest(name, source.name, disks=[{"name": "data", "size": "16Mi"}]))
    status = cluster.wait_phase(name, "Running", timeout=90, nodeName=source.name)
    uid, guest = status["domainUUID"], status["domainName"]
    source_qemu = source.qemu_processes()[guest]
    assert guest not in target.qemu_processes()
    poll(lambda: all(o.readyz() == 200 for o in two_nodes.operators.values()), timeout=30, what="both ready")

    cluster.apply(migration_manifest(migration, name, target.name))

    def finished() -> dict[str, Any] | None:
        body = get_migration(cluster, migration)
        return body if (body.get("status") or {}).get("phase") in ("Succeeded", "Failed") else None
    done = poll(finished, timeout=120, interval=0.2, what=f"migration {migration} to finish")
    result = done["status"]
    assert result["phase"] == "Succeeded", result
    target_qemu = target.qemu_processes()[guest]  # the guest's QEMU on the target at the hand-over

    # The guest runs on the target; the source's QEMU and domain are gone.
    assert domain_active(target, uid) is True
    assert domain_active(source, uid) is None
    assert guest not in source.qemu_processes()
    # The VM is the target's now, and its operator took the running guest over without restarting it.
    vm_status = cluster.wait_phase(name, "Running", timeout=60, nodeName=target.name)
    vm = cluster.get(name)
    assert vm is not None and vm["spec"]["nodeName"] == target.name
    assert MIGRATING_ANNOTATION not in (vm["metadata"].get("annotations") or {})
    assert target.qemu_processes()[guest] == target_qemu  # the same QEMU process, still running
    assert target_qemu[1] > source_qemu[1]  # started for the migration, after the source's
    migrating = next(c for c in vm_status["conditions"] if c["type"] == "Migrating")
    assert (migrating["status"], migrating["reason"]) == ("False", "Migrated")
    assert vm_status.get("restarts", 0) == status.get("restarts", 0)
    assert vm_status["startedAt"] == status["startedAt"]

    # libvirt's own account: a migration, no boot on the target, no stop other than the migration's.
    poll(lambda: "Resumed/Migrated" in two_nodes.events.of(target.name, uid), timeout=10, what="target events")
    on_source, on_target = two_nodes.events.of(source.name, uid), two_nodes.events.of(target.name, uid)
    assert "Suspended/Migrated" in on_source and "Stopped/Migrated" in on_source, on_source
    assert [e for e in on_source if e.startswith("Stopped/")] == ["Stopped/Migrated"], on_source
    assert on_target[0] == "Started/Migrated" and "Resumed/Migrated" in on_target, on_target
    assert not [e for e in on_target if e.startswith(("Started/Booted", "Stopped/"))], on_target

    # The migration's status and the Events on both objects.
    assert (result["sourceNode"], result["storage"]) == (source.name, "Block" if block else "Shared")
    assert result["startTime"] and result["endTime"] and result["vmUID"] == uid
    assert result["job"]["dataProcessed"] > 0
    report_line(request.config, f"migration ({request.node.callspec.id}): job {result['job']}; {result['message']}")
    reasons = cluster.event_reasons(migration)
    assert {"MigrationAccepted", "MigrationSucceeded"} <= set(reasons), reasons
    vm_reasons = cluster.event_reasons(name)
    assert {"MigrationStarted", "Migrated"} <= set(vm_reasons), vm_reasons
    assert "RestartedByPolicy" not in vm_reasons and "DomainRedefined" not in vm_reasons, vm_reasons

    # Disks: shared stay where they are; a block migration's are on the target only.
    if block:
        assert (two_nodes.storage[target.name] / uid / "data.qcow2").exists()
        poll(lambda: not (two_nodes.storage[source.name] / uid).exists(), timeout=10, what="source disks removed")
    else:
        assert (two_nodes.storage[source.name] / uid / "data.qcow2").exists()

    # The target's operator owns it now: a power change goes through it.
    cluster.patch_spec(name, {"paused": True})
    cluster.wait_phase(name, "Paused", timeout=30, nodeName=target.name)


GUEST_IMAGE_SCRIPT = REPO / "hack" / "guest-image.sh"
GUEST_BOOT_TIMEOUT = 600.0  # TCG: 40-100 s to the agent on an idle machine, minutes beside other guests


def guest_image(images: Path) -> None:
    """The real Debian guest (hack/guest-image.sh) into ``images``: built once per machine, then copied from its
    cache in about a second. Skips when not root or when it cannot be built (fails instead under CI)."""
    if os.geteuid() != 0:
        pytest.skip("hack/guest-image.sh builds as root")
    done = subprocess.run(["bash", str(GUEST_IMAGE_SCRIPT), str(images)], capture_output=True, text=True,
                          timeout=1500)
    if done.returncode != 0:
        reason = f"hack/guest-image.sh could not build the real guest:\n{done.stderr[-3000:]}"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)


def guest_boot_clock(host: NamespacedHost, uid: str) -> BootClock:
    """The guest's uptime and boot id, read inside it through its agent on ``host``'s libvirtd (raises while
    the guest is not there or its agent does not answer yet)."""
    conn = host.open()
    try:
        return boot_clock(agent_of(conn.lookupByUUIDString(uid)))
    finally:
        conn.close()


@pytest.mark.timeout(1500 + 2 * GUEST_BOOT_TIMEOUT)
@pytest.mark.parametrize("two_nodes", ["shared-images"], indirect=True)
def test_a_real_linux_guest_is_live_migrated_and_keeps_its_uptime_and_boot_id(
        cluster: Cluster, two_nodes: TwoNodes, request: pytest.FixtureRequest) -> None:
    """The real Debian guest (512 MiB, direct kernel boot, the operators' --domain-type auto: TCG here) booted
    once on the source and migrated with shared storage: inside the guest the same boot (its boot id) and an
    uptime that went on, read through its agent before on the source and after on the target."""
    source, target = two_nodes.source, two_nodes.target
    images = two_nodes.images[source.name]
    guest_image(images)
    # No NIC (nothing to forward, nothing to leave the hosts): without the mask the guest waits for a network
    # that never comes (systemd-networkd-wait-online's 120 s, which cloud-init and so the agent are ordered after).
    cmdline = ((images / "debian-cloud.cmdline").read_text().strip()
               + " systemd.mask=systemd-networkd-wait-online.service")
    name, migration = unique("realmig"), unique("to-b")
    cluster.apply(vm_manifest(
        name, source.name, memory="512Mi", disks=[{"name": "root", "image": "debian-cloud.qcow2"}],
        boot={"kernel": "debian-cloud.vmlinuz", "initrd": "debian-cloud.initrd", "cmdline": cmdline}))
    applied = time.monotonic()
    status = cluster.wait_phase(name, "Running", timeout=120, nodeName=source.name)
    uid, guest = status["domainUUID"], status["domainName"]
    console = Path(status["consoleLog"])

    # Booted: its agent runs a command in it (guest-exec).
    try:
        before = poll(lambda: guest_boot_clock(source, uid), timeout=GUEST_BOOT_TIMEOUT, interval=1.0,
                      what="the guest agent to run `cat /proc/uptime .../boot_id` in the guest on the source")
    except AssertionError as exc:
        tail = console.read_text(errors="replace")[-3000:] if console.exists() else "(no console log)"
        raise AssertionError(f"{exc}\nconsole:\n{tail}\n{two_nodes.operators[source.name].tail(40)}") from None
    read_before = time.monotonic()
    to_agent = read_before - applied
    node = json.loads(cluster.kubectl("get", "node", source.name, "-o", "json"))
    domain_type = (node["metadata"].get("annotations") or {}).get(f"{GROUP}/domain-type", "?")  # printed
    source_qemu = source.qemu_processes()[guest]
    assert guest not in target.qemu_processes()
    poll(lambda: all(o.readyz() == 200 for o in two_nodes.operators.values()), timeout=30, what="both ready")

    cluster.apply(migration_manifest(migration, name, target.name))
    asked = time.monotonic()
    done = poll(lambda: (get_migration(cluster, migration).get("status") or {}).get("phase")
                in ("Succeeded", "Failed") and get_migration(cluster, migration), timeout=300, interval=0.2,
                what=f"migration {migration} to finish")
    migrated_in = time.monotonic() - asked
    result = done["status"]
    assert result["phase"] == "Succeeded", result
    assert result["storage"] == "Shared", result

    # The guest's QEMU runs on the target, started for the migration; the source's is gone.
    target_qemu = target.qemu_processes()[guest]
    assert target_qemu[1] > source_qemu[1]
    assert domain_active(target, uid) is True
    assert domain_active(source, uid) is None
    assert guest not in source.qemu_processes()
    vm_status = cluster.wait_phase(name, "Running", timeout=60, nodeName=target.name)
    assert vm_status.get("restarts", 0) == status.get("restarts", 0)
    assert vm_status["startedAt"] == status["startedAt"]

    # Inside the guest: the same boot, and its uptime went on.
    after = poll(lambda: guest_boot_clock(target, uid), timeout=120, interval=0.5,
                 what="the guest agent to answer on the target")
    wall = time.monotonic() - read_before
    assert after.boot_id == before.boot_id, (before, after)
    assert after.uptime > before.uptime, (before, after)
    assert target.qemu_processes()[guest] == target_qemu  # the same QEMU process, still running
    boot_log = console.read_text(errors="replace")
    assert boot_log.count("Linux version") == 1, "the serial console shows a second boot"

    # libvirt's account and the operator's: a migration, no boot on the target, no restart.
    poll(lambda: "Resumed/Migrated" in two_nodes.events.of(target.name, uid), timeout=10, what="target events")
    on_source, on_target = two_nodes.events.of(source.name, uid), two_nodes.events.of(target.name, uid)
    assert [e for e in on_source if e.startswith("Stopped/")] == ["Stopped/Migrated"], on_source
    assert on_target[0] == "Started/Migrated", on_target
    assert not [e for e in on_target if e.startswith(("Started/Booted", "Stopped/"))], on_target
    vm_reasons = cluster.event_reasons(name)
    assert "Migrated" in vm_reasons, vm_reasons
    assert "RestartedByPolicy" not in vm_reasons and "DomainRedefined" not in vm_reasons, vm_reasons

    job = result["job"]
    report_line(request.config,
                f"real guest ({domain_type}, 512 MiB): apply to the guest agent answering {to_agent:.1f} s; migration "
                f"(apply to Succeeded) {migrated_in:.1f} s, libvirt's job {job.get('timeElapsedMs')} ms, downtime "
                f"{job.get('downtimeMs')} ms, {int(job.get('dataProcessed', 0)) / 2**20:.0f} MiB moved; in the guest: "
                f"uptime {before.uptime:.1f} s -> {after.uptime:.1f} s over {wall:.1f} s, same boot id")


@pytest.mark.parametrize("two_nodes", ["shared"], indirect=True)
def test_drain_moves_every_running_vm_of_the_node_and_lists_the_ones_that_cannot_move(
        cluster: Cluster, two_nodes: TwoNodes) -> None:
    source, target = two_nodes.source, two_nodes.target
    running, halted = unique("drain"), unique("halted")
    cluster.apply(vm_manifest(running, source.name))
    cluster.apply(vm_manifest(halted, source.name, run_strategy="Halted"))
    cluster.wait_phase(running, "Running", timeout=90)
    cluster.wait_phase(halted, "Stopped", timeout=90)

    done = subprocess.run([*OPERATOR, "drain", source.name, "--to", target.name, "--kubeconfig",
                           str(cluster.api.admin_kubeconfig), "--timeout", "120", "--namespace", NS],
                          capture_output=True, text=True, timeout=180)
    print(done.stdout, done.stderr)
    assert done.returncode == 2, done.stdout + done.stderr  # all migrations succeeded; one VM could not move
    assert f"cannot migrate {NS}/{halted}: not running (phase Stopped)" in done.stdout
    assert f"{NS}/{running}: Succeeded" in done.stdout
    cluster.wait_phase(running, "Running", timeout=60, nodeName=target.name)
    vm = cluster.get(halted)
    assert vm is not None and vm["spec"]["nodeName"] == source.name


def running_guests(nodes: TwoNodes, uid: str) -> dict[str, bool | None]:
    return {host.name: domain_active(host, uid) for host in (nodes.source, nodes.target)}


def start_slow_migration(cluster: Cluster, nodes: TwoNodes, name: str, migration: str) -> tuple[str, str]:
    cluster.apply(vm_manifest(name, nodes.source.name, memory=SLOW_MEMORY))
    status = cluster.wait_phase(name, "Running", timeout=90, nodeName=nodes.source.name)
    poll(lambda: all(o.readyz() == 200 for o in nodes.operators.values()), timeout=30, what="both ready")
    cluster.apply(migration_manifest(migration, name, nodes.target.name))
    poll(lambda: (get_migration(cluster, migration).get("status") or {}).get("phase") == "Running", timeout=60,
         interval=0.1, what="the migration to run")
    return status["domainUUID"], status["domainName"]


SLOW_MEMORY = "256Mi"


@pytest.mark.parametrize("two_nodes", ["shared-slow"], indirect=True)
def test_deleting_a_running_migration_aborts_it_and_the_guest_stays_on_the_source(
        cluster: Cluster, two_nodes: TwoNodes) -> None:
    name, migration = unique("abort"), unique("to-b")
    uid, guest = start_slow_migration(cluster, two_nodes, name, migration)
    qemu = two_nodes.source.qemu_processes()[guest]
    poll(lambda: guest in two_nodes.target.qemu_processes(), timeout=20, interval=0.1,
         what="libvirt's job to run (the target's QEMU started)")

    cluster.kubectl("delete", MIGRATION_PLURAL, migration, "-n", NS)

    def aborted() -> dict[str, Any] | None:
        vm = cluster.get(name)
        if vm is None or MIGRATING_ANNOTATION in (vm["metadata"].get("annotations") or {}):
            return None
        conditions = {c["type"]: c for c in (vm.get("status") or {}).get("conditions") or []}
        return vm if conditions.get("Migrating", {}).get("reason") == "MigrationAborted" else None
    vm = poll(aborted, timeout=60, what="the migration aborted and the VM released")
    assert vm["spec"]["nodeName"] == two_nodes.source.name
    poll(lambda: running_guests(two_nodes, uid) == {two_nodes.source.name: True, two_nodes.target.name: None},
         timeout=30, what="the guest on the source only")
    assert two_nodes.source.qemu_processes()[guest] == qemu  # the same QEMU: never stopped
    cluster.wait_phase(name, "Running", timeout=30, nodeName=two_nodes.source.name)
    poll(lambda: "MigrationAborted" in cluster.event_reasons(name), timeout=10, what="the VM's Event")
    assert "RestartedByPolicy" not in cluster.event_reasons(name)


@pytest.mark.parametrize("two_nodes", ["shared-slow"], indirect=True)
def test_a_source_operator_killed_mid_migration_and_restarted_converges_to_exactly_one_running_guest(
        cluster: Cluster, two_nodes: TwoNodes) -> None:
    name, migration = unique("kill"), unique("to-b")
    uid, guest = start_slow_migration(cluster, two_nodes, name, migration)
    source_operator = two_nodes.operators[two_nodes.source.name]
    poll(lambda: guest in two_nodes.target.qemu_processes(), timeout=20, interval=0.1,
         what="libvirt's job to run (the target's QEMU started)")
    source_operator.kill()  # SIGKILL: libvirtd drives the peer-to-peer job on, or gives up, without it

    def job_ended() -> bool:
        guests = running_guests(two_nodes, uid)
        return guests[two_nodes.source.name] is None or guests[two_nodes.target.name] is None
    poll(job_ended, timeout=120, interval=0.2, what="libvirt's job to end without the operator")
    source_operator.start()

    done = poll(lambda: (get_migration(cluster, migration).get("status") or {}).get("phase") in ("Succeeded", "Failed")
                and get_migration(cluster, migration), timeout=60, what="the migration to converge")
    guests = running_guests(two_nodes, uid)
    print(f"\nafter the restart: migration {done['status']['phase']} ({done['status']['message']}); guests {guests}")
    running_on = [node for node, active in guests.items() if active]
    logs = "\n".join(f"--- operator {node}:\n{op.tail(60)}" for node, op in two_nodes.operators.items())
    assert len(running_on) == 1, f"{guests}\n{logs}"  # exactly one running guest, never two, never none
    assert [node for node, active in guests.items() if active is not None] == running_on, logs  # none left over
    expected = two_nodes.target.name if done["status"]["phase"] == "Succeeded" else two_nodes.source.name
    assert running_on == [expected]
    cluster.wait_phase(name, "Running", timeout=60, nodeName=expected)
    vm = cluster.get(name)
    assert vm is not None and vm["spec"]["nodeName"] == expected
    assert MIGRATING_ANNOTATION not in (vm["metadata"].get("annotations") or {})
    assert guest in (two_nodes.target if expected == two_nodes.target.name else two_nodes.source).qemu_processes()


@pytest.mark.parametrize("two_nodes", ["shared-slow"], indirect=True)
def test_a_target_operator_killed_mid_migration_and_restarted_takes_the_guest_over(
        cluster: Cluster, two_nodes: TwoNodes) -> None:
    name, migration = unique("tkill"), unique("to-b")
    uid, guest = start_slow_migration(cluster, two_nodes, name, migration)
    target_operator = two_nodes.operators[two_nodes.target.name]
    poll(lambda: guest in two_nodes.target.qemu_processes(), timeout=20, interval=0.1,
         what="libvirt's job to run (the target's QEMU started)")
    target_operator.kill()  # the job is libvirtd's: the source's operator finishes and hands the VM over
    done = poll(lambda: (get_migration(cluster, migration).get("status") or {}).get("phase") in ("Succeeded", "Failed")
                and get_migration(cluster, migration), timeout=120, what="the migration to end")
    assert done["status"]["phase"] == "Succeeded", done["status"]
    qemu = two_nodes.target.qemu_processes()[guest]
    target_operator.start()  # its start-up finds the VM its own, its domain running: no restart
    cluster.wait_phase(name, "Running", timeout=60, nodeName=two_nodes.target.name)
    assert running_guests(two_nodes, uid) == {two_nodes.source.name: None, two_nodes.target.name: True}
    assert two_nodes.target.qemu_processes()[guest] == qemu
    assert "RestartedByPolicy" not in cluster.event_reasons(name)


@pytest.mark.parametrize("two_nodes", ["shared-slow"], indirect=True)
def test_the_target_libvirtd_killed_mid_migration_fails_it_and_the_guest_keeps_running_on_the_source(
        cluster: Cluster, two_nodes: TwoNodes) -> None:
    name, migration = unique("lvkill"), unique("to-b")
    uid, guest = start_slow_migration(cluster, two_nodes, name, migration)
    qemu = two_nodes.source.qemu_processes()[guest]
    target = two_nodes.target
    poll(lambda: guest in target.qemu_processes(), timeout=20, interval=0.1,
         what="libvirt's job to run (the target's QEMU started)")
    pid = target.daemon_pid("libvirtd")
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    done = poll(lambda: (get_migration(cluster, migration).get("status") or {}).get("phase") in ("Succeeded", "Failed")
                and get_migration(cluster, migration), timeout=120, what="the migration to end")
    print(f"\nafter the target's libvirtd died: {done['status']['phase']}: {done['status']['message']}")
    assert done["status"]["phase"] == "Failed"
    target.start_libvirtd()  # it finds the half-received guest's QEMU and ends it
    poll(lambda: running_guests(two_nodes, uid) == {two_nodes.source.name: True, target.name: None}, timeout=60,
         what="exactly one guest: on the source")
    poll(lambda: guest not in target.qemu_processes(), timeout=30, what="no QEMU left on the target")
    assert two_nodes.source.qemu_processes()[guest] == qemu  # never stopped
    status = cluster.wait_phase(name, "Running", timeout=60, nodeName=two_nodes.source.name)
    migrating = next(c for c in status["conditions"] if c["type"] == "Migrating")
    assert (migrating["status"], migrating["reason"]) == ("False", "MigrationFailed")
    vm = cluster.get(name)
    assert vm is not None and MIGRATING_ANNOTATION not in (vm["metadata"].get("annotations") or {})


def base_image(path: Path, mib: int) -> Path:
    """A qcow2 base image of ``mib`` MiB of random data (every cluster allocated, nothing a copy can skip)."""
    raw = path.with_suffix(".raw")
    with open(raw, "wb") as handle:
        for _ in range(mib):
            handle.write(os.urandom(1024 * 1024))
    subprocess.run(["qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", str(raw), str(path)], check=True,
                   timeout=120)
    raw.unlink()
    return path


@pytest.mark.parametrize("two_nodes", ["block"], indirect=True)
def test_a_block_migration_to_a_target_without_disk_space_fails_naming_it_and_the_guest_stays_on_the_source(
        cluster: Cluster, two_nodes: TwoNodes, work_dir: Path) -> None:
    source, target = two_nodes.source, two_nodes.target
    base_image(work_dir / f"images-{source.name}" / "base.qcow2", 24)  # 24 MiB of data the copy must move
    name, migration = unique("nospace"), unique("to-b")
    # The target's storage directory: 8 MiB, in its operator's view and its QEMU's alike.
    with small_filesystem(target, two_nodes.storage[target.name], 8) as target_storage:
        before = sorted(p.name for p in target_storage.iterdir())
        cluster.apply(vm_manifest(name, source.name, disks=[{"name": "data", "image": "base.qcow2"}]))
        status = cluster.wait_phase(name, "Running", timeout=90, nodeName=source.name)
        uid, guest = status["domainUUID"], status["domainName"]
        qemu = source.qemu_processes()[guest]
        poll(lambda: all(o.readyz() == 200 for o in two_nodes.operators.values()), timeout=30, what="both ready")

        cluster.apply(migration_manifest(migration, name, target.name))
        done = poll(lambda: (get_migration(cluster, migration).get("status") or {}).get("phase")
                    in ("Succeeded", "Failed") and get_migration(cluster, migration), timeout=120,
                    what="the migration to end")
        result = done["status"]
        print(f"\nno space on the target: {result['phase']}: {result['message']}")
        assert result["phase"] == "Failed", result
        assert result["storage"] == "Block"
        assert target.name in result["message"] and "space" in result["message"], result["message"]

        # The guest runs on the source, in the same QEMU process; nothing of it is left on the target.
        poll(lambda: running_guests(two_nodes, uid) == {source.name: True, target.name: None}, timeout=30,
             what="the guest on the source only")
        assert source.qemu_processes()[guest] == qemu
        poll(lambda: guest not in target.qemu_processes(), timeout=30, what="no QEMU left on the target")
        poll(lambda: sorted(p.name for p in target_storage.iterdir()) == before, timeout=30,
             what=f"the target's storage as it was ({before})")

        # The VM is released and Running on the source.
        status = cluster.wait_phase(name, "Running", timeout=60, nodeName=source.name)
        migrating = next(c for c in status["conditions"] if c["type"] == "Migrating")
        assert (migrating["status"], migrating["reason"]) == ("False", "MigrationFailed")
        assert target.name in migrating["message"]
        vm = cluster.get(name)
        assert vm is not None and vm["spec"]["nodeName"] == source.name
        assert MIGRATING_ANNOTATION not in (vm["metadata"].get("annotations") or {})
        assert "MigrationFailed" in cluster.event_reasons(migration)
        assert "RestartedByPolicy" not in cluster.event_reasons(name)

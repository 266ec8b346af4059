"""Live migration through the operator against a plain `virsh migrate` of the same guest (issue 16).

Two hypervisor hosts of their own (testbed/hypervisors.py: each a libvirtd in its own namespaces, linked by
a veth pair), one operator process per host against the run's API (the real control plane only: the
benchmark's identity, the chart's RBAC), both with the same storage directory (shared storage, detected by
the operators' markers: `--shared-storage auto`). One guest of `memory_mib` (512 MiB in every run: the
e2e tests' minimal guest, no OS, with a 16 MiB disk on the shared storage) is created on the first host and
migrated back and forth through VirtualMachineMigrations, `each_way` times each way. Time per migration:
from just before the migration's create request to the first GET that shows it `Succeeded` (polled every
50 ms); downtime: its `status.job.downtimeMs` (libvirt's job-completed event on the source).

The baseline, in the same run and interleaved with the operator's migrations (one of each in turn, so that
both see the same machine): a domain of the same definition (the managed domain's, without the operator's
metadata, its own UUID, name, disk and console log; libvirt-python defines and starts it on the first
host), which neither operator owns or touches, migrated between the same hosts by
`virsh migrate` with the flags the operator uses (hypervisor/migration.py `migration_flags` for shared
storage: `--live --p2p --persistent --undefinesource --unsafe`). Time: the `virsh` process, start to exit;
downtime: the same job-completed event of the source's libvirtd.

Run alone: `PYTHONPATH=.:operator .venv/bin/python -m benchmarks.migration [--each-way N] [--output FILE]`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import libvirt

from benchmarks import report
from benchmarks.apis import KINDS, ApiChoice, Endpoint, vm_path
from benchmarks.common import OPERATOR_FLAGS, percentile, scratch_dir, wait_until
from libvirt_operator.api.constants import GROUP, MIGRATING_ANNOTATION, MIGRATION_PLURAL, VERSION
from libvirt_operator.api.migration import StorageMode
from libvirt_operator.hypervisor import event_loop
from libvirt_operator.hypervisor.migration import migration_flags
from testbed import OperatorProcess, vm_manifest
from testbed.hypervisors import HypervisorHosts, NamespacedHost

GUEST_MIB = 512
DISK = {"name": "data", "size": "16Mi"}
POLL = 0.05  # seconds between the GETs that look for the migration's end
TIMEOUT = 300.0  # one migration, at most
COMPLETED_EVENT_WAIT = 5.0  # how long the job-completed event may trail `virsh migrate`'s exit
# virsh migrate's option for each flag of virDomainMigrateToURI3 the operator may pass.
VIRSH_OPTIONS = {
    libvirt.VIR_MIGRATE_LIVE: "--live",
    libvirt.VIR_MIGRATE_PEER2PEER: "--p2p",
    libvirt.VIR_MIGRATE_PERSIST_DEST: "--persistent",
    libvirt.VIR_MIGRATE_UNDEFINE_SOURCE: "--undefinesource",
    libvirt.VIR_MIGRATE_UNSAFE: "--unsafe",
    libvirt.VIR_MIGRATE_NON_SHARED_DISK: "--copy-storage-all",
}


@dataclass
class MigrationResult:
    guest_mib: int
    operator_s: list[float] = field(default_factory=list)  # create request to Succeeded seen
    operator_job_s: list[float] = field(default_factory=list)  # libvirt's job, as status.job.timeElapsedMs says
    operator_downtime_ms: list[float] = field(default_factory=list)  # status.job.downtimeMs
    virsh_s: list[float] = field(default_factory=list)  # the virsh process, start to exit
    virsh_job_s: list[float] = field(default_factory=list)  # libvirt's job (the job-completed event's time)
    virsh_downtime_ms: list[float] = field(default_factory=list)


def unavailable(apis: ApiChoice) -> str | None:
    """Why this machine or run cannot measure migrations (None: it can)."""
    if apis.plane is None:
        return "needs the real control plane (--api real): the migration CRD and the operators' RBAC"
    if os.geteuid() != 0:
        return "needs root (hypervisor hosts in namespaces of their own)"
    missing = [tool for tool in ("unshare", "nsenter", "ip", "libvirtd", "virtlogd", "virsh", "qemu-img")
               if shutil.which(tool) is None]
    return f"needs {', '.join(missing)}" if missing else None


def virsh_options(flags: int) -> list[str]:
    """Pure: `virsh migrate`'s options for virDomainMigrateToURI3 flags; raises on a flag it has none for."""
    options = [option for bit, option in VIRSH_OPTIONS.items() if flags & bit]
    left = flags & ~sum(VIRSH_OPTIONS)
    if left:
        raise ValueError(f"no virsh migrate option for flags {left:#x}")
    return options


def run(each_way: int, apis: ApiChoice, *, memory_mib: int = GUEST_MIB) -> MigrationResult:
    node = f"benchmig{uuid.uuid4().hex[:6]}"
    result = MigrationResult(memory_mib)
    with ExitStack() as stack:
        base = stack.enter_context(scratch_dir("lvo-bench-migration-"))
        hosts = stack.enter_context(HypervisorHosts([f"{node}-a", f"{node}-b"], subnet=98))
        first, second = hosts.hosts
        api = stack.enter_context(apis.phase(base, first.name, second.name))
        storage = base / "disks"  # both hosts': shared storage
        operators = [OperatorProcess(api.api, host.name, storage, base / f"images-{host.name}", *OPERATOR_FLAGS,
                                     "--shared-storage", "auto", "--migration-uri", host.migration_uri,
                                     libvirt_uri=host.uri) for host in hosts]
        stack.callback(_delete_migrations, api.admin, api.namespace)
        for proc in operators:
            stack.callback(proc.stop)
            proc.start(wait_ready=False)
        for proc in operators:
            proc.wait_ready()
        completed = stack.enter_context(_completed_jobs(hosts))

        name = f"{node}-vm"
        vm = vm_manifest(name, first.name, memory=f"{memory_mib}Mi", namespace=api.namespace, disks=[DISK])
        api.admin.call("POST", vm_path(api.namespace), vm)
        uid = _wait_running(api.admin, api.namespace, name, first.name)["domainUUID"]
        raw = _start_unmanaged_copy(first, uid, f"{node}-raw", storage / uid, base / "raw")
        options = virsh_options(migration_flags(StorageMode.SHARED))

        for i in range(2 * each_way):
            source, target = (first, second) if i % 2 == 0 else (second, first)
            _through_operator(api.admin, api.namespace, name, f"{name}-{i}", source, target, result)
            _through_virsh(raw, options, source, target, completed, result)
    return result


def results(result: MigrationResult) -> dict[str, float]:
    """The keys `benchmarks/run` writes (docs/benchmarks.md)."""
    operator_p50, virsh_p50 = percentile(result.operator_s, 50), percentile(result.virsh_s, 50)
    # libvirt's job times, when its statistics carried them (time_elapsed: libvirt reports it, not promised).
    jobs = {key: percentile(values, 50) for key, values in (("migration_operator_job_p50_s", result.operator_job_s),
                                                            ("migration_virsh_job_p50_s", result.virsh_job_s))
            if values}
    return {
        "migration_operator_p50_s": operator_p50,
        "migration_operator_max_s": max(result.operator_s),
        "migration_virsh_p50_s": virsh_p50,
        "migration_virsh_max_s": max(result.virsh_s),
        **jobs,
        "migration_over_virsh": operator_p50 / virsh_p50,
        "migration_downtime_operator_ms": percentile(result.operator_downtime_ms, 50),
        "migration_downtime_operator_max_ms": max(result.operator_downtime_ms),
        "migration_downtime_virsh_ms": percentile(result.virsh_downtime_ms, 50),
        "migration_downtime_virsh_max_ms": max(result.virsh_downtime_ms),
        "migration_guest_mib": result.guest_mib,
        "migration_count": len(result.operator_s),
    }


# --- through the operator -------------------------------------------------------------------------------------

def _migration_path(namespace: str) -> str:
    return f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{MIGRATION_PLURAL}"


def _through_operator(admin: Endpoint, namespace: str, vm: str, migration: str, source: NamespacedHost,
                      target: NamespacedHost, result: MigrationResult) -> None:
    _wait_running(admin, namespace, vm, source.name)  # the previous migration's target took it over
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "VirtualMachineMigration",
            "metadata": {"name": migration, "namespace": namespace},
            "spec": {"vmName": vm, "targetNode": target.name}}
    path = f"{_migration_path(namespace)}/{migration}"

    def ended() -> dict[str, Any] | None:
        status = admin.call("GET", path).get("status") or {}
        return status if status.get("phase") in ("Succeeded", "Failed") else None

    began = time.monotonic()
    admin.call("POST", _migration_path(namespace), body)
    status = wait_until(ended, timeout=TIMEOUT, interval=POLL, what=f"migration {migration} to end")
    seconds = time.monotonic() - began
    if status["phase"] != "Succeeded":
        raise RuntimeError(f"migration {migration} from {source.name} to {target.name}: {status.get('message')}")
    # The downtime comes with the Succeeded write, or from the target's operator just after it.
    job = dict(status.get("job") or {})
    if "downtimeMs" not in job:
        job = wait_until(lambda: _with_downtime(admin, path), timeout=10, what=f"migration {migration}'s downtime")
    result.operator_s.append(seconds)
    result.operator_downtime_ms.append(float(job["downtimeMs"]))
    if "timeElapsedMs" in job:
        result.operator_job_s.append(job["timeElapsedMs"] / 1000.0)
    print(f"      operator {source.name[-1]} -> {target.name[-1]}: {seconds:.2f} s, downtime {job['downtimeMs']} ms",
          flush=True)


def _with_downtime(admin: Endpoint, path: str) -> dict[str, Any] | None:
    job = (admin.call("GET", path).get("status") or {}).get("job") or {}
    return dict(job) if "downtimeMs" in job else None


def _wait_running(admin: Endpoint, namespace: str, name: str, node: str) -> dict[str, Any]:
    """The VM's status once it is Running on ``node`` and no migration holds it."""
    def ready() -> dict[str, Any] | None:
        vm = admin.call("GET", f"{vm_path(namespace)}/{name}")
        status = vm.get("status") or {}
        if status.get("phase") == "Failed":
            raise RuntimeError(f"VM {name} failed: {status.get('message')}")
        held = MIGRATING_ANNOTATION in ((vm.get("metadata") or {}).get("annotations") or {})
        on_node = (vm.get("spec") or {}).get("nodeName") == node
        return dict(status) if status.get("phase") == "Running" and on_node and not held else None
    return wait_until(ready, timeout=120, interval=POLL, what=f"VM {name} Running on {node}")


def _delete_migrations(admin: Endpoint, namespace: str) -> None:
    admin.call("DELETE", _migration_path(namespace))


# --- plain virsh ----------------------------------------------------------------------------------------------

def _start_unmanaged_copy(host: NamespacedHost, uid: str, name: str, vm_dir: Path, raw_dir: Path) -> str:
    """A domain of the managed one's definition that the operators do not own (no metadata of theirs, its own
    UUID and name), its files (disk, console log) in ``raw_dir`` instead of the VM's directory; started."""
    raw_dir.mkdir()
    conn = host.open()
    try:
        managed = conn.lookupByUUIDString(uid)
        root = ET.fromstring(managed.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
        for tag in ("uuid", "metadata"):
            for element in root.findall(tag):
                root.remove(element)
        name_el = root.find("name")
        assert name_el is not None
        name_el.text = name
        prefix = str(vm_dir)
        for element in root.iter():
            for attr, value in element.attrib.items():
                if value.startswith(prefix + "/"):
                    element.set(attr, str(raw_dir / Path(value).name))
        for source in root.iterfind("devices/disk/source"):
            path = source.get("file")
            if path is not None and path.startswith(str(raw_dir)):
                original = str(vm_dir / Path(path).name)
                size = managed.blockInfo(original)[0]
                subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", path, str(size)], check=True, timeout=60)
        conn.defineXML(ET.tostring(root, encoding="unicode")).create()
    finally:
        conn.close()
    return name


class _CompletedJobs:
    """libvirt's job-completed events of both hosts, as (host, domain name, statistics)."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, dict[str, Any]]] = []
        self.lock = threading.Lock()

    def callback(self, _conn: Any, dom: Any, stats: dict[str, Any], host: str) -> None:
        with self.lock:
            self.events.append((host, str(dom.name()), dict(stats)))

    def count(self) -> int:
        with self.lock:
            return len(self.events)

    def find(self, since: int, host: str, name: str) -> dict[str, Any] | None:
        with self.lock:
            for got_host, got_name, stats in self.events[since:]:
                if (got_host, got_name) == (host, name):
                    return stats
        return None


@contextmanager
def _completed_jobs(hosts: HypervisorHosts) -> Iterator[_CompletedJobs]:
    event_loop.ensure_running()
    jobs = _CompletedJobs()
    conns: list[libvirt.virConnect] = []
    try:
        for host in hosts:
            conn = host.open()
            conns.append(conn)
            conn.domainEventRegisterAny(None, libvirt.VIR_DOMAIN_EVENT_ID_JOB_COMPLETED, jobs.callback, host.name)
        yield jobs
    finally:
        for conn in conns:
            try:
                conn.close()
            except libvirt.libvirtError:
                pass


def _through_virsh(name: str, options: Sequence[str], source: NamespacedHost, target: NamespacedHost,
                   completed: _CompletedJobs, result: MigrationResult) -> None:
    since = completed.count()
    command = ["virsh", "-q", "-c", source.uri, "migrate", *options, name, target.migration_uri]
    began = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT, stdin=subprocess.DEVNULL)
    seconds = time.monotonic() - began
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}): {done.stderr.strip()}")
    stats = wait_until(_found(completed, since, source.name, name), timeout=COMPLETED_EVENT_WAIT,
                       what=f"the job-completed event of {name} on {source.name}")
    result.virsh_s.append(seconds)
    result.virsh_downtime_ms.append(float(stats["downtime"]))
    if "time_elapsed" in stats:
        result.virsh_job_s.append(stats["time_elapsed"] / 1000.0)
    print(f"      virsh    {source.name[-1]} -> {target.name[-1]}: {seconds:.2f} s, downtime {stats['downtime']} ms",
          flush=True)


def _found(completed: _CompletedJobs, since: int, host: str, name: str) -> Callable[[], dict[str, Any] | None]:
    return lambda: completed.find(since, host, name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.migration", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--each-way", type=int, default=3, metavar="N", help="migrations each way (default: 3)")
    parser.add_argument("--memory-mib", type=int, default=GUEST_MIB, help="the guest's memory (default: 512)")
    parser.add_argument("--api", choices=KINDS, default=os.environ.get("LVO_API", "real"),
                        help="the real control plane of hack/cluster.sh (the emulator cannot run it)")
    parser.add_argument("--output", type=Path, help="also write the keys as JSON here")
    args = parser.parse_args(argv)
    apis = ApiChoice(args.api)
    try:
        why = unavailable(apis)
        if why is not None:
            print(f"migration: skipped: {why}", file=sys.stderr)
            return 2
        print(f"API: {apis.describe()}", flush=True)
        began = time.monotonic()
        keys = results(run(args.each_way, apis, memory_mib=args.memory_mib))
    finally:
        apis.close()
    document = {k: round(v, 6) for k, v in {**keys, "duration_s": time.monotonic() - began}.items()}
    print(report.migration_line(keys))
    print(json.dumps(document, indent=2))
    if args.output is not None:
        args.output.write_text(json.dumps(document, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

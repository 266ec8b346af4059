"""Hypervisor hosts of their own on one machine: each a libvirtd + virtlogd in its own mount, network, UTS
and PID namespaces, the hosts linked by a veth pair (../shared/ENVIRONMENT.md, "Two hypervisor hosts").

- Each host's init (PID 1 of its PID namespace, under ``unshare --kill-child``) bind-mounts per-host
  directories over /etc/libvirt (a copy of the machine's, without domains, autostart links, hooks and
  secrets), /run/libvirt, /var/lib/libvirt, /var/log/libvirt, /var/cache/libvirt and /etc/hosts, sets
  the hostname and brings up ``lo``; then the daemons are started inside with ``nsenter``. Nothing of the
  machine's own libvirtd (its config, sockets, guests) is touched: it is only hidden inside the hosts.
- The hosts reach each other over the veth pair (``10.99.<n>.1`` and ``.2``, addresses that exist only
  inside these namespaces): peer-to-peer migration is libvirtd to libvirtd (``qemu+tcp://<address>/system``,
  no auth, plain TCP: only inside the test's namespaces) and QEMU to QEMU.
- The operators run outside, in the machine's own network namespace, so they reach the API server on
  127.0.0.1 like every other test's; each talks to its host's libvirtd through the host's unix socket,
  a path in the host's directory that is visible from outside (``qemu:///system?socket=...``: a
  pathname socket is found through the file system, whatever network namespace the caller is in).
- ``close()`` kills each host's PID 1 (the kernel then kills everything in its PID namespace: libvirtd,
  virtlogd, QEMU), which ends the namespaces, their mounts and the veth pair; then removes the directory.
  ``leftovers()`` says what would be left behind (for the tests' own check).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import libvirt

from testbed.polling import wait_for

BIND_DIRS = ("etc/libvirt", "run/libvirt", "var/lib/libvirt", "var/log/libvirt", "var/cache/libvirt")
# Inside a host: created on its own /var and /run (libvirtd makes most itself, not all of them).
STATE_DIRS = ("run/libvirt/qemu", "var/lib/libvirt/qemu", "var/cache/libvirt/qemu", "var/log/libvirt/qemu")
QEMU_CONF_KEYS = ("user", "group", "security_driver", "cgroup_controllers", "migration_host",
                  "migration_address")
LIBVIRTD_CONF_KEYS = ("listen_tls", "listen_tcp", "listen_addr", "auth_tcp", "host_uuid", "tcp_port")

INIT = r"""set -eu
mount --make-rprivate /
for dir in {binds}; do mount --bind "$ROOT/$dir" "/$dir"; done
mount --bind "$ROOT/hosts" /etc/hosts
hostname "$HOSTNAME_WANTED"
ip link set lo up
touch "$ROOT/ready"
trap 'exit 0' TERM
while true; do sleep 1 & wait $! || true; done
"""


def _run(*args: str, timeout: float = 60) -> str:
    done = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


def _set_keys(path: Path, values: dict[str, str], keys: tuple[str, ...]) -> None:
    """A libvirt config file with ``keys`` removed (commented-out defaults stay comments) and ``values`` set."""
    kept = [line for line in path.read_text().splitlines()
            if line.split("=", 1)[0].strip() not in keys]
    path.write_text("\n".join([*kept, *(f"{k} = {v}" for k, v in values.items())]) + "\n")


def _not_copied(directory: str, names: list[str]) -> set[str]:
    """What of the machine's /etc/libvirt a host does not get: autostart links, secrets, hooks, and the
    machine's guests (/etc/libvirt/qemu/*.xml, with the *.xml.new libvirtd writes and renames meanwhile:
    copying one that vanished failed a migration test while other tests defined guests)."""
    skipped = {name for name in names if name in ("autostart", "secrets", "hooks")}
    if Path(directory) == Path("/etc/libvirt/qemu"):
        skipped |= {name for name in names if name.endswith((".xml", ".xml.new"))}
    return skipped


def _now_ticks() -> int:
    return int(float(Path("/proc/uptime").read_text().split()[0]) * os.sysconf("SC_CLK_TCK"))


def _start_ticks(pid: str) -> int:
    """A process's start time in clock ticks since boot (0 when it is gone)."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return 0


def _child_of(pid: int) -> int:
    """The one child of ``pid`` (unshare's: PID 1 of the new PID namespace)."""
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:  # field 4: ppid
                return int(entry)
    raise RuntimeError(f"unshare ({pid}) has no child")


@dataclass
class NamespacedHost:
    """One hypervisor host in namespaces of its own."""

    name: str  # hostname inside, and the Kubernetes node name its operator uses
    address: str  # its veth address (inside its network namespace only)
    root: Path  # its directory: the bind-mounted trees, the init script
    host_uuid: str = field(default_factory=lambda: str(uuid.uuid4()))
    unshare: subprocess.Popen[bytes] | None = None
    pid: int = 0  # its PID 1, as the machine sees it
    namespaces: tuple[str, ...] = ()  # its pid, net and mnt namespaces ("pid:[4026531836]")

    @property
    def socket(self) -> Path:
        return self.root / "run" / "libvirt" / "libvirt-sock"

    @property
    def uri(self) -> str:
        """Where the operator and the test reach this host's libvirtd from outside its namespaces."""
        return f"qemu:///system?socket={self.socket}"

    @property
    def migration_uri(self) -> str:
        """Where the other host's libvirtd reaches this one (peer-to-peer migration)."""
        return f"qemu+tcp://{self.address}/system"

    def nsenter(self, *args: str, timeout: float = 60) -> str:
        return _run("nsenter", "-t", str(self.pid), "-m", "-n", "-u", "-p", "--", *args, timeout=timeout)

    def open(self) -> libvirt.virConnect:
        return libvirt.open(self.uri)

    def _processes(self) -> Iterator[tuple[int, list[bytes], str]]:
        """(pid as the machine sees it, argv, /proc stat line) of every process in this host's PID
        namespace; processes that end while being read are left out."""
        own_ns = os.readlink(f"/proc/{self.pid}/ns/pid")
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                if os.readlink(f"/proc/{entry}/ns/pid") != own_ns:
                    continue
                argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            yield int(entry), argv, stat

    def daemon_pid(self, name: str) -> int | None:
        """The pid (as the machine sees it) of this host's ``libvirtd`` or ``virtlogd``; None: not running."""
        for pid, argv, _stat in self._processes():
            if argv and os.path.basename(argv[0].decode(errors="replace")) == name:
                return pid
        return None

    def start_libvirtd(self) -> None:
        """(Again:) libvirtd inside the host; returns once it answers on its socket."""
        self.nsenter("libvirtd", "-d", "--listen", "-p", "/run/libvirt/libvirtd-host.pid")
        wait_for(lambda: HypervisorHosts.answers(self), timeout=60, interval=0.2,
                 what=f"libvirtd of host {self.name} to answer at {self.socket}")

    def qemu_processes(self) -> dict[str, tuple[int, int]]:
        """Guest name -> (pid as the machine sees it, start time in clock ticks since boot) of every QEMU
        process in this host's PID namespace."""
        found: dict[str, tuple[int, int]] = {}
        for pid, argv, stat in self._processes():
            if not argv or b"qemu-system" not in argv[0]:
                continue
            for index, arg in enumerate(argv[:-1]):
                if arg == b"-name":
                    guest = argv[index + 1].decode(errors="replace").split(",", 1)[0].removeprefix("guest=")
                    start = int(stat.rsplit(")", 1)[1].split()[19])  # field 22: starttime
                    found[guest] = (pid, start)
        return found


class HypervisorHosts:
    """``count`` hosts linked by one veth pair (two hosts) ; use as a context manager."""

    def __init__(self, names: list[str], *, subnet: int = 99) -> None:
        if len(names) != 2:
            raise ValueError("one veth pair links exactly two hosts")
        self.base = Path(tempfile.mkdtemp(prefix="lvo-hosts-", dir="/var/tmp"))
        self.base.chmod(0o755)
        token = uuid.uuid4().hex[:6]
        self.veths = (f"lvo{token}a", f"lvo{token}b")
        self.hosts = [NamespacedHost(name, f"10.{subnet}.0.{index + 1}", self.base / name)
                      for index, name in enumerate(names)]
        self._closed_at: int | None = None  # clock ticks since boot when close() began

    def __enter__(self) -> HypervisorHosts:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def __iter__(self) -> Iterator[NamespacedHost]:
        return iter(self.hosts)

    # --- start -------------------------------------------------------------------------------------------

    def start(self) -> None:
        for host in self.hosts:
            self._prepare(host)
            self._unshare(host)
        a, b = self.hosts
        _run("ip", "link", "add", self.veths[0], "netns", str(a.pid), "type", "veth", "peer", "name",
             self.veths[1], "netns", str(b.pid))
        for host, veth in zip(self.hosts, self.veths, strict=True):
            host.nsenter("ip", "addr", "add", f"{host.address}/24", "dev", veth)
            host.nsenter("ip", "link", "set", veth, "up")
        for host in self.hosts:
            # -p: the default pid files (/run/virtlogd.pid, /run/libvirtd.pid) are the machine's daemons'.
            host.nsenter("virtlogd", "-d", "-p", "/run/libvirt/virtlogd-host.pid")
            host.start_libvirtd()

    def _prepare(self, host: NamespacedHost) -> None:
        root = host.root
        for sub in BIND_DIRS[1:]:
            (root / sub).mkdir(parents=True)
        shutil.copytree("/etc/libvirt", root / "etc" / "libvirt", symlinks=True, ignore=_not_copied)
        for sub in STATE_DIRS:
            (root / sub).mkdir(parents=True, exist_ok=True)
        _set_keys(root / "etc/libvirt/qemu.conf", {
            "user": '"root"', "group": '"root"', "security_driver": '"none"',
            # Without it both hosts number their guests' cgroups like the machine's daemon and share paths.
            "cgroup_controllers": "[ ]",
            "migration_host": f'"{host.address}"', "migration_address": f'"{host.address}"',
        }, QEMU_CONF_KEYS)
        _set_keys(root / "etc/libvirt/libvirtd.conf", {
            "listen_tls": "0", "listen_tcp": "1", "listen_addr": f'"{host.address}"', "auth_tcp": '"none"',
            # Distinct per host, else libvirt refuses: "Attempt to migrate guest to the same host".
            "host_uuid": f'"{host.host_uuid}"',
        }, LIBVIRTD_CONF_KEYS)
        (root / "hosts").write_text("127.0.0.1 localhost\n" + "".join(
            f"{h.address} {h.name}\n" for h in self.hosts))
        (root / "init.sh").write_text(INIT.format(binds=" ".join(BIND_DIRS)))

    def _unshare(self, host: NamespacedHost) -> None:
        env = {**os.environ, "ROOT": str(host.root), "HOSTNAME_WANTED": host.name}
        log = open(host.root / "init.log", "ab")
        host.unshare = subprocess.Popen(
            ["unshare", "--mount", "--net", "--uts", "--pid", "--fork", "--mount-proc", "--kill-child",
             "bash", str(host.root / "init.sh")], env=env, stdout=log, stderr=log, stdin=subprocess.DEVNULL,
            start_new_session=True)
        log.close()
        wait_for(lambda: (host.root / "ready").exists() or host.unshare.poll() is not None,  # type: ignore[union-attr]
                 timeout=20, what=f"host {host.name}'s namespaces")
        if host.unshare.poll() is not None:
            raise RuntimeError(f"host {host.name}: unshare exited ({host.unshare.returncode}): "
                               f"{(host.root / 'init.log').read_text(errors='replace')[-2000:]}")
        host.pid = _child_of(host.unshare.pid)
        host.namespaces = tuple(os.readlink(f"/proc/{host.pid}/ns/{kind}") for kind in ("pid", "net", "mnt"))

    @staticmethod
    def answers(host: NamespacedHost) -> bool:
        if not host.socket.exists():
            return False
        try:
            conn = host.open()
        except libvirt.libvirtError:
            return False
        conn.close()
        return True

    # --- stop ----------------------------------------------------------------------------------------------

    def close(self) -> None:
        """Everything of the hosts gone: processes, namespaces (with their mounts and the veth pair), files."""
        self._closed_at = _now_ticks()
        for host in self.hosts:
            if host.pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(host.pid, signal.SIGKILL)  # PID 1: the kernel kills the whole namespace
            if host.unshare is not None:
                with contextlib.suppress(ProcessLookupError):
                    host.unshare.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    host.unshare.wait(30)
        deadline = time.monotonic() + 30
        while self.leftovers() and time.monotonic() < deadline:
            time.sleep(0.1)
        shutil.rmtree(self.base, ignore_errors=True)

    def leftovers(self) -> list[str]:
        """What of these hosts still exists on the machine: processes in their namespaces, the veth pair."""
        namespaces = {ns: host.name for host in self.hosts for ns in host.namespaces}
        found = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            # A namespace's number is reused once it is gone (libvirt gives each QEMU a mount namespace of
            # its own): a process started after the tear-down began is never one of ours.
            if self._closed_at is not None and _start_ticks(entry) > self._closed_at:
                continue
            for kind in ("pid", "net", "mnt"):
                try:
                    ns = os.readlink(f"/proc/{entry}/ns/{kind}")
                except OSError:
                    continue
                if ns in namespaces:
                    found.append(f"host {namespaces[ns]}: process {entry} ({ns})")
                    break
        links = _run("ip", "-o", "link", "show")
        found += [f"veth {veth}" for veth in self.veths if f" {veth}@" in links or f" {veth}:" in links]
        return found


@contextlib.contextmanager
def small_filesystem(host: NamespacedHost, path: Path, size_mib: int) -> Iterator[Path]:
    """A file system of ``size_mib`` MiB (ext4 on a loop device) mounted over the directory ``path``, both in
    the machine's mount namespace and in ``host``'s: one file system (the kernel gives the second mount of a
    block device the first one's superblock), so that what the host's operator, outside, creates there is
    what the host's QEMU, inside, sees, and both run out of space alike. Unmounted (both), the loop device
    detached and its image removed when the block is left."""
    image = Path(tempfile.mkstemp(prefix="lvo-small-fs-", suffix=".img", dir="/var/tmp")[1])
    device = ""
    mounted: list[str] = []
    try:
        with open(image, "r+b") as handle:
            handle.truncate(size_mib * 1024 * 1024)
        _run("mkfs.ext4", "-q", "-F", "-m", "0", "-O", "^has_journal", str(image))
        device = _run("losetup", "--find", "--show", str(image)).strip()
        _run("mount", device, str(path))
        mounted.append("machine")
        path.chmod(0o755)
        host.nsenter("mount", device, str(path))
        mounted.append("host")
        yield path
    finally:
        if "host" in mounted and host.pid and Path(f"/proc/{host.pid}").exists():
            with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                host.nsenter("umount", str(path))
        if "machine" in mounted:
            _run("umount", str(path))
        if device:
            with contextlib.suppress(RuntimeError):
                _run("losetup", "--detach", device)
        image.unlink(missing_ok=True)

"""Operator settings: one dataclass, filled from command-line flags with environment fallbacks.

Every flag has an environment variable (shown in `libvirt-operator run --help`) so that the Helm
chart can pass settings either way. Flags win over the environment, the environment over defaults.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ENV_PREFIX = "LIBVIRT_OPERATOR_"


def _state_dir() -> Path:
    """Per-user state directory for local mode (no preparation needed).

    For root it is under /var/lib: QEMU runs as another user (libvirt-qemu) that cannot enter /root.
    """
    if os.geteuid() == 0:
        return Path("/var/lib/libvirt-operator/local")
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(base) / "libvirt-operator"


@dataclass(frozen=True)
class Settings:
    node_name: str = "dev-node"
    libvirt_uri: str = "qemu:///system"
    kubeconfig: str | None = None
    namespace: str | None = None  # None: all namespaces
    image_dir: Path = Path("/var/lib/libvirt-operator/images")
    storage_dir: Path = Path("/var/lib/libvirt-operator/disks")
    domain_type: str = "auto"  # auto | kvm | qemu
    sync_interval: float = 60.0
    watch_timeout: float = 300.0
    shutdown_timeout: float = 60.0
    stopped_event_delay: float = 2.0
    shared_storage: str = "auto"  # auto | true | false
    resume_guests_on_host_boot: bool = True
    delete_orphan_disks: bool = False
    max_vcpus: int = 64
    max_memory_mib: int = 262144
    max_disks: int = 16
    max_interfaces: int = 8
    workers: int = 16
    health_port: int = 8080
    metrics_port: int = 9090
    reconnect_max_backoff: float = 30.0
    keepalive_interval: int = 5
    keepalive_count: int = 3
    lease: bool = True
    lease_duration: float = 15.0
    migration_uri: str = ""  # "": this node receives no live migrations
    image_cache_ttl: float = 86400.0  # 0: cached URL images are never removed
    migration_bandwidth: int = 0  # MiB/s a live migration from this node may use; 0: no limit
    log_level: str = "INFO"
    extra: dict[str, Any] = field(default_factory=dict)


# (flag, env suffix, field, type, help). Types: str, int, float, path, bool (--x/--no-x).
_OPTIONS: list[tuple[str, str, str, str, str]] = [
    ("--node-name", "NODE_NAME", "node_name", "str", "node whose VMs this operator owns"),
    ("--libvirt-uri", "LIBVIRT_URI", "libvirt_uri", "str", "libvirt connection URI"),
    ("--kubeconfig", "KUBECONFIG", "kubeconfig", "str", "kubeconfig file"),
    ("--namespace", "NAMESPACE", "namespace", "str", "watch one namespace only"),
    ("--image-dir", "IMAGE_DIR", "image_dir", "path", "directory of base images that disks may use"),
    ("--storage-dir", "STORAGE_DIR", "storage_dir", "path", "directory where VM disks are created"),
    ("--domain-type", "DOMAIN_TYPE", "domain_type", "str", "libvirt domain type: auto, kvm or qemu"),
    ("--sync-interval", "SYNC_INTERVAL", "sync_interval", "float", "seconds between full power-state syncs"),
    ("--watch-timeout", "WATCH_TIMEOUT", "watch_timeout", "float",
     "seconds each VirtualMachine watch request stays open (the API server's timeoutSeconds); the client "
     "gives up a little later (10%, at least 5 s) and opens it again, which also ends a stalled stream"),
    ("--shutdown-timeout", "SHUTDOWN_TIMEOUT", "shutdown_timeout", "float",
     "seconds a graceful guest shutdown may take before the domain is destroyed"),
    ("--stopped-event-delay", "STOPPED_EVENT_DELAY", "stopped_event_delay", "float",
     "seconds a STOPPED event is held back so that a reboot (STOPPED then STARTED) does not flap"),
    ("--shared-storage", "SHARED_STORAGE", "shared_storage", "str",
     "whether the storage directory is shared between nodes: auto, true or false"),
    ("--resume-guests-on-host-boot", "RESUME_GUESTS_ON_HOST_BOOT", "resume_guests_on_host_boot", "bool",
     "start guests that should run but are shut off when the operator starts"),
    ("--delete-orphan-disks", "DELETE_ORPHAN_DISKS", "delete_orphan_disks", "bool",
     "remove the disks of owned domains whose VirtualMachine no longer exists"),
    ("--max-vcpus", "MAX_VCPUS", "max_vcpus", "int", "largest cpu.cores a VM may ask for"),
    ("--max-memory-mib", "MAX_MEMORY_MIB", "max_memory_mib", "int", "largest memory (MiB) a VM may ask for"),
    ("--max-disks", "MAX_DISKS", "max_disks", "int", "most disks a VM may have"),
    ("--max-interfaces", "MAX_INTERFACES", "max_interfaces", "int", "most interfaces a VM may have"),
    ("--workers", "WORKERS", "workers", "int", "VMs reconciled concurrently"),
    ("--health-port", "HEALTH_PORT", "health_port", "int", "port of /healthz (liveness) and /readyz (readiness)"),
    ("--metrics-port", "METRICS_PORT", "metrics_port", "int", "port of the Prometheus /metrics endpoint (0: off)"),
    ("--reconnect-max-backoff", "RECONNECT_MAX_BACKOFF", "reconnect_max_backoff", "float",
     "upper bound of the libvirt reconnection backoff, seconds"),
    ("--lease", "LEASE", "lease", "bool",
     "hold a per-node Lease so that only one operator process acts for a node (the others wait)"),
    ("--lease-duration", "LEASE_DURATION", "lease_duration", "float",
     "seconds after which a lease not renewed may be taken over"),
    ("--migration-uri", "MIGRATION_URI", "migration_uri", "str",
     "libvirt URI at which other nodes' libvirtd reach this node's for a live migration (peer-to-peer, "
     "e.g. qemu+tls://<host>/system), published on the Node; none: this node receives no migrations"),
    ("--migration-bandwidth", "MIGRATION_BANDWIDTH", "migration_bandwidth", "int",
     "MiB/s a live migration from this node may use (libvirt's migration bandwidth; 0: no limit)"),
    ("--image-cache-ttl", "IMAGE_CACHE_TTL", "image_cache_ttl", "float",
     "seconds a base image downloaded from a URL stays cached once no disk uses it (0: kept for ever)"),
    ("--log-level", "LOG_LEVEL", "log_level", "str", "DEBUG, INFO, WARNING or ERROR"),
]

# Flags every `run` accepts; the Helm chart's tests check the chart passes nothing else.
RUN_FLAGS = frozenset(opt[0] for opt in _OPTIONS) | frozenset(
    "--no-" + opt[0][2:] for opt in _OPTIONS if opt[3] == "bool"
)


# What a default of None means, for the help text.
_NONE_DEFAULTS = {"kubeconfig": "in-cluster config", "namespace": "all namespaces", "migration_uri": "none"}


def _dev_help() -> dict[str, tuple[str, str | None]]:
    """Where `dev` (local mode) differs: (help, default shown; None: the flag is required)."""
    node_dir = f"{_state_dir()}/<node name>"
    return {
        "kubeconfig": ("file the kubeconfig of the API emulator is written to (required)", None),
        "libvirt_uri": ("libvirt connection URI",
                        "qemu:///system, or test:///default when no libvirtd answers there"),
        "image_dir": ("directory of base images that disks may use", f"{node_dir}/images"),
        "storage_dir": ("directory where VM disks are created", f"{node_dir}/disks"),
    }


def default_text(name: str, value: Any) -> str:
    """Pure: a setting's default as the help shows it."""
    if value is None or value == "":
        return _NONE_DEFAULTS.get(name, "none")
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def help_text(name: str, *, mode: str = "run") -> str:
    """Pure: the help of a setting's flag for ``run`` or ``dev``: what it does, its default, its variable."""
    option = next(opt for opt in _OPTIONS if opt[2] == name)
    text, default = option[4], default_text(name, getattr(Settings(), name))
    dev = _dev_help() if mode == "dev" else {}
    if name in dev:
        text, dev_default = dev[name]
        default = dev_default or ""
    shown = f"{text} (default: {default})" if default else text
    return f"{shown} [env {env_name_for(name)}]".replace("%", "%%")  # argparse formats help with %


def add_arguments(parser: argparse.ArgumentParser, *, mode: str = "run") -> None:
    """Declare every setting as a flag (``mode``: run or dev, for the help); defaults stay None so that
    the environment can fill the gap."""
    for flag, _env, name, kind, _help in _OPTIONS:
        full_help = help_text(name, mode=mode)
        if kind == "bool":
            parser.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=None,
                                help=full_help)
        else:
            conv: Any = {"str": str, "int": int, "float": float, "path": Path}[kind]
            parser.add_argument(flag, dest=name, type=conv, default=None, help=full_help)


def env_name_for(name: str) -> str:
    for _flag, env, field_name, _kind, _help in _OPTIONS:
        if field_name == name:
            if name in ("node_name", "kubeconfig"):
                return env
            return ENV_PREFIX + env
    raise KeyError(name)


def _parse_bool(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"not a boolean: {value!r}")


def from_namespace(args: argparse.Namespace, *, local_mode: bool = False, **overrides: Any) -> Settings:
    """Build Settings from parsed flags, then the environment, then defaults."""
    values: dict[str, Any] = {}
    kinds = {opt[2]: opt[3] for opt in _OPTIONS}
    for name, kind in kinds.items():
        value = getattr(args, name, None)
        if value is None:
            raw = os.environ.get(env_name_for(name))
            if raw is not None and raw != "":
                conv: Any = {"str": str, "int": int, "float": float, "path": Path, "bool": _parse_bool}[kind]
                try:
                    value = conv(raw)
                except ValueError as exc:
                    raise SystemExit(f"invalid {env_name_for(name)}={raw!r}: {exc}") from exc
        if value is not None:
            values[name] = value
    if local_mode:
        state = _state_dir()
        values.setdefault("image_dir", state / "images")
        values.setdefault("storage_dir", state / "disks")
    values.update({k: v for k, v in overrides.items() if v is not None})
    settings = Settings(**values)
    validate(settings)
    return settings


def validate(settings: Settings) -> None:
    if settings.domain_type not in ("auto", "kvm", "qemu"):
        raise SystemExit(f"--domain-type must be auto, kvm or qemu, not {settings.domain_type!r}")
    if settings.shared_storage not in ("auto", "true", "false"):
        raise SystemExit(f"--shared-storage must be auto, true or false, not {settings.shared_storage!r}")
    if settings.lease_duration < 2:
        raise SystemExit("--lease-duration must be at least 2 seconds")
    for name in ("sync_interval", "shutdown_timeout", "stopped_event_delay", "reconnect_max_backoff"):
        if getattr(settings, name) < 0:
            raise SystemExit(f"{name.replace('_', '-')} must not be negative")
    if settings.watch_timeout < 1:
        raise SystemExit("--watch-timeout must be at least 1 second")
    if settings.workers < 1:
        raise SystemExit("--workers must be at least 1")
    if settings.migration_bandwidth < 0:
        raise SystemExit("--migration-bandwidth must not be negative")


def watch_timeouts(server_timeout: float) -> tuple[int, float]:
    """Pure: (the API server's timeoutSeconds, the client's total timeout) of one watch request. The client
    waits 10% longer (at least 5 s), so that a healthy stream is ended by the server, a stalled one by us."""
    server = max(round(server_timeout), 1)
    return server, server + max(server * 0.1, 5.0)


def replace(settings: Settings, **changes: Any) -> Settings:
    return dataclasses.replace(settings, **changes)

"""The one owner of the libvirt connection.

Like nova's ``Host``: opens the connection with an auth callback, tests it, registers the lifecycle and
close callbacks on every (re)connection, reconnects with exponential backoff when libvirtd goes away, and
reports the connection state to a listener (which marks the node). Every blocking libvirt call runs in a
thread pool, never on the asyncio loop, and libvirt errors leave this module as clear exceptions.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import errno as errnos
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, TypeVar

import libvirt

from libvirt_operator.hypervisor import event_loop

logger = logging.getLogger(__name__)

T = TypeVar("T")

# libvirt below this version lacks APIs we rely on (undefine flags, event details); nova keeps a minimum too.
MIN_LIBVIRT_VERSION = (6, 0, 0)


class HypervisorError(Exception):
    """A libvirt operation failed; the message says which and why.

    ``code``, ``domain`` and ``errno`` are libvirt's (VIR_ERR_*, VIR_FROM_*, and the errno of a system
    error); ``detail`` is libvirt's own words without its generic prefix ("network 'x' is not active").
    """

    def __init__(self, message: str, code: int | None = None, *, domain: int | None = None,
                 errno: int | None = None, detail: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.domain = domain
        self.errno = errno
        self.detail = detail or message


class HypervisorUnavailable(HypervisorError):
    """libvirtd cannot be reached right now; the operation may be retried after reconnection."""


class DomainNotFound(HypervisorError):
    """The domain does not exist (any more)."""


@dataclass(frozen=True)
class LifecycleEvent:
    """A libvirt lifecycle event as it crossed from the native event thread."""

    uuid: str
    event: int
    detail: int
    received: float  # time.monotonic() in the native thread, for latency accounting
    wall_time: float  # time.time(), for status.lastEvent


@dataclass(frozen=True)
class AgentEvent:
    """The QEMU guest agent of a domain connected (True) or disconnected (False); ``rebooted``: instead,
    the guest rebooted (libvirt's REBOOT event: QEMU stays, so no lifecycle event says it)."""

    uuid: str
    connected: bool
    rebooted: bool = False


_BROKEN_CODES = {libvirt.VIR_ERR_SYSTEM_ERROR, libvirt.VIR_ERR_INTERNAL_ERROR, libvirt.VIR_ERR_NO_CONNECT,
                 libvirt.VIR_ERR_INVALID_CONN}
_BROKEN_DOMAINS = {libvirt.VIR_FROM_REMOTE, libvirt.VIR_FROM_RPC}


def is_connection_error(exc: libvirt.libvirtError) -> bool:
    """nova's _test_connection rule: system/internal errors from the RPC layer mean the link broke."""
    code = exc.get_error_code()
    if code in (libvirt.VIR_ERR_NO_CONNECT, libvirt.VIR_ERR_INVALID_CONN):
        return True
    return code in _BROKEN_CODES and exc.get_error_domain() in _BROKEN_DOMAINS


def translate(exc: libvirt.libvirtError, what: str) -> HypervisorError:
    code = exc.get_error_code()
    message = f"{what}: {exc.get_error_message() or exc}"
    int1 = exc.get_int1()  # a system error's errno (-1: none)
    fields: dict[str, Any] = {"domain": exc.get_error_domain(), "errno": int1 if int1 and int1 > 0 else None,
                              "detail": exc.get_str2() or exc.get_error_message() or None}
    if code == libvirt.VIR_ERR_NO_DOMAIN:
        return DomainNotFound(message, code, **fields)
    if is_connection_error(exc):
        return HypervisorUnavailable(message, code, **fields)
    return HypervisorError(message, code, **fields)


class Retry(StrEnum):
    """Whether starting the same domain again can succeed without anybody changing anything."""

    PERMANENT = "permanent"  # the spec or the host must change first: the VM ends Failed, naming the field
    TRANSIENT = "transient"  # resources, locks, a QEMU that died starting: retried with backoff


# libvirt's start errors (virDomainCreateWithFlags), sorted. A code not listed is transient: retrying is
# what the operator always did, and a permanent error retried costs log lines, not a lost VM.
START_ERRORS: dict[int, Retry] = {
    # The definition or what it names is wrong for this host.
    libvirt.VIR_ERR_OPERATION_INVALID: Retry.PERMANENT,  # "network 'default' is not active"
    libvirt.VIR_ERR_CONFIG_UNSUPPORTED: Retry.PERMANENT,  # "Domain requires KVM, but it is not available"
    libvirt.VIR_ERR_NO_NETWORK: Retry.PERMANENT,  # "no network with matching name 'x'"
    libvirt.VIR_ERR_INVALID_NETWORK: Retry.PERMANENT,
    libvirt.VIR_ERR_NO_NETWORK_PORT: Retry.PERMANENT,
    libvirt.VIR_ERR_NO_INTERFACE: Retry.PERMANENT,
    libvirt.VIR_ERR_INVALID_INTERFACE: Retry.PERMANENT,
    libvirt.VIR_ERR_INVALID_MAC: Retry.PERMANENT,
    libvirt.VIR_ERR_NO_NWFILTER: Retry.PERMANENT,
    libvirt.VIR_ERR_NO_NODE_DEVICE: Retry.PERMANENT,
    libvirt.VIR_ERR_DEVICE_MISSING: Retry.PERMANENT,
    libvirt.VIR_ERR_NO_STORAGE_POOL: Retry.PERMANENT,
    libvirt.VIR_ERR_NO_STORAGE_VOL: Retry.PERMANENT,
    libvirt.VIR_ERR_NO_SECRET: Retry.PERMANENT,
    libvirt.VIR_ERR_NO_SECURITY_MODEL: Retry.PERMANENT,
    libvirt.VIR_ERR_CPU_INCOMPATIBLE: Retry.PERMANENT,  # the host CPU lacks what the guest CPU needs
    libvirt.VIR_ERR_NO_OS: Retry.PERMANENT,
    libvirt.VIR_ERR_NO_KERNEL: Retry.PERMANENT,
    libvirt.VIR_ERR_OS_TYPE: Retry.PERMANENT,
    libvirt.VIR_ERR_XML_ERROR: Retry.PERMANENT,
    libvirt.VIR_ERR_XML_DETAIL: Retry.PERMANENT,
    libvirt.VIR_ERR_XML_INVALID_SCHEMA: Retry.PERMANENT,
    libvirt.VIR_ERR_INVALID_ARG: Retry.PERMANENT,
    libvirt.VIR_ERR_ARGUMENT_UNSUPPORTED: Retry.PERMANENT,
    libvirt.VIR_ERR_NO_SUPPORT: Retry.PERMANENT,
    libvirt.VIR_ERR_OPERATION_UNSUPPORTED: Retry.PERMANENT,
    # The host's policy refuses it (polkit/ACL, a qemu hook script).
    libvirt.VIR_ERR_ACCESS_DENIED: Retry.PERMANENT,
    libvirt.VIR_ERR_OPERATION_DENIED: Retry.PERMANENT,
    libvirt.VIR_ERR_AUTH_FAILED: Retry.PERMANENT,
    libvirt.VIR_ERR_HOOK_SCRIPT_FAILED: Retry.PERMANENT,
    # Resources, locks and timing: a later start may well succeed.
    libvirt.VIR_ERR_INTERNAL_ERROR: Retry.TRANSIENT,  # QEMU exited while starting ("cannot set up guest memory")
    libvirt.VIR_ERR_NO_MEMORY: Retry.TRANSIENT,
    libvirt.VIR_ERR_OPERATION_FAILED: Retry.TRANSIENT,  # "unable to connect to the monitor", races
    libvirt.VIR_ERR_OPERATION_TIMEOUT: Retry.TRANSIENT,  # "cannot acquire state change lock"
    libvirt.VIR_ERR_OPERATION_ABORTED: Retry.TRANSIENT,
    libvirt.VIR_ERR_RESOURCE_BUSY: Retry.TRANSIENT,
    libvirt.VIR_ERR_AGENT_UNRESPONSIVE: Retry.TRANSIENT,
    libvirt.VIR_ERR_NO_DOMAIN: Retry.TRANSIENT,  # gone meanwhile: the next pass defines it again
    libvirt.VIR_ERR_RPC: Retry.TRANSIENT,
    libvirt.VIR_ERR_NO_CONNECT: Retry.TRANSIENT,
    libvirt.VIR_ERR_INVALID_CONN: Retry.TRANSIENT,
}
# A system error (VIR_ERR_SYSTEM_ERROR) by its errno: something named is missing, not allowed or the wrong
# kind of thing ("Cannot get interface MTU on 'br0': No such device"), or else a resource ran short.
PERMANENT_ERRNOS = frozenset({errnos.ENOENT, errnos.ENODEV, errnos.ENXIO, errnos.ENOTDIR, errnos.EISDIR,
                              errnos.ELOOP, errnos.ENAMETOOLONG, errnos.EACCES, errnos.EPERM, errnos.EROFS,
                              errnos.EINVAL, errnos.ENOTSUP, errnos.EOPNOTSUPP, errnos.ENOEXEC})


def start_retry(code: int | None, domain: int | None = None, errno: int | None = None) -> Retry:
    """Pure: whether a failed start of a domain is worth retrying as it is."""
    if domain in _BROKEN_DOMAINS and code in _BROKEN_CODES:
        return Retry.TRANSIENT  # the link to libvirtd broke: reconnect, then retry
    if code == libvirt.VIR_ERR_SYSTEM_ERROR:
        return Retry.PERMANENT if errno in PERMANENT_ERRNOS else Retry.TRANSIENT
    if code is None:
        return Retry.TRANSIENT
    return START_ERRORS.get(code, Retry.TRANSIENT)


def _auth_callback(creds: list[list[Any]], _opaque: Any) -> int:
    # The operator runs unattended: it can answer no prompt. Fail clearly rather than hang.
    if not creds:
        return 0
    raise HypervisorError(f"libvirt asked for {len(creds)} credential(s); this operator cannot answer prompts")


_AUTH = [[libvirt.VIR_CRED_AUTHNAME, libvirt.VIR_CRED_ECHOPROMPT, libvirt.VIR_CRED_REALM,
          libvirt.VIR_CRED_PASSPHRASE, libvirt.VIR_CRED_NOECHOPROMPT, libvirt.VIR_CRED_EXTERNAL],
         _auth_callback, None]


StateListener = Callable[[bool, str], None]
EventSink = Callable[[LifecycleEvent], None]


class Connection:
    """An always-reconnecting libvirt connection whose calls run off the asyncio loop."""

    def __init__(
        self,
        uri: str,
        *,
        workers: int = 8,
        max_backoff: float = 30.0,
        keepalive_interval: int = 5,
        keepalive_count: int = 3,
        call_timeout: float = 300.0,
    ) -> None:
        self.uri = uri
        self._max_backoff = max_backoff
        self._keepalive = (keepalive_interval, keepalive_count)
        self._call_timeout = call_timeout
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=workers,
                                                               thread_name_prefix="libvirt-call")
        self._conn: libvirt.virConnect | None = None
        self._lock = threading.Lock()
        self._callback_ids: list[int] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._event_sinks: list[EventSink] = []
        self._agent_sinks: list[Callable[[AgentEvent], None]] = []
        self._state_listeners: list[StateListener] = []
        self._connected = asyncio.Event()
        self._reconnect_task: asyncio.Task[None] | None = None
        self._closing = False
        self.last_error = ""
        self.connects = 0  # successful (re)connections, for logs, metrics and tests
        self.on_call: Callable[[str, bool], None] | None = None  # metrics hook: (operation, ok)

    # --- listeners -----------------------------------------------------------------------------

    def add_event_sink(self, sink: EventSink) -> None:
        """``sink`` runs on the asyncio loop for every lifecycle event, in libvirt's order."""
        self._event_sinks.append(sink)

    def add_agent_sink(self, sink: Callable[[AgentEvent], None]) -> None:
        """``sink`` runs on the asyncio loop for every guest agent (dis)connection."""
        self._agent_sinks.append(sink)

    def add_state_listener(self, listener: StateListener) -> None:
        """``listener(connected, reason)`` runs on the asyncio loop at every connect and disconnect."""
        self._state_listeners.append(listener)

    @property
    def connected(self) -> bool:
        return self._conn is not None

    # --- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Start connecting in the background; returns at once (see ``wait_connected``)."""
        self._loop = asyncio.get_running_loop()
        event_loop.ensure_running()
        self._closing = False
        self._schedule_reconnect(initial=True)

    async def wait_connected(self, limit: float | None = None) -> bool:
        try:
            async with asyncio.timeout(limit):
                await self._connected.wait()
        except TimeoutError:
            return False
        return True

    async def close(self) -> None:
        self._closing = True
        if self._reconnect_task is not None:
            self._reconnect_task.cancel()
            try:
                await self._reconnect_task
            except (asyncio.CancelledError, Exception):
                pass
        conn = self._detach()
        if conn is not None:
            await asyncio.get_running_loop().run_in_executor(self._executor, self._close_quietly, conn)
        self._executor.shutdown(wait=False, cancel_futures=True)

    # --- calls ---------------------------------------------------------------------------------

    async def call(self, what: str, fn: Callable[[libvirt.virConnect], T], *, limit: float | None = None) -> T:
        """Run ``fn(conn)`` in the thread pool; libvirt errors become HypervisorError subclasses.
        ``limit``: seconds, for calls that take long by nature (a live migration), instead of the usual limit."""
        conn = self._conn
        if conn is None:
            raise HypervisorUnavailable(f"{what}: not connected to libvirt at {self.uri} ({self.last_error})")
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._executor, self._run, conn, what, fn)
        try:
            limit = self._call_timeout if limit is None else limit
            async with asyncio.timeout(limit):  # not wait_for: it can swallow a cancel (3.11)
                return await future
        except TimeoutError as exc:
            raise HypervisorUnavailable(f"{what}: no answer from libvirt within {limit:.0f}s") from exc

    def _run(self, conn: libvirt.virConnect, what: str, fn: Callable[[libvirt.virConnect], T]) -> T:
        try:
            result = fn(conn)
        except libvirt.libvirtError as exc:
            error = translate(exc, what)
            if self.on_call is not None:
                self.on_call(what, isinstance(error, DomainNotFound))
            if isinstance(error, HypervisorUnavailable) and self._loop is not None:
                self._loop.call_soon_threadsafe(self._lost, conn, str(error))
            raise error from exc
        if self.on_call is not None:
            self.on_call(what, True)
        return result

    # --- connection management -----------------------------------------------------------------

    def _schedule_reconnect(self, *, initial: bool = False) -> None:
        if self._closing or (self._reconnect_task is not None and not self._reconnect_task.done()):
            return
        self._reconnect_task = asyncio.get_running_loop().create_task(self._reconnect_loop(initial))

    async def _reconnect_loop(self, initial: bool) -> None:
        delay = 0.25
        loop = asyncio.get_running_loop()
        while not self._closing:
            try:
                conn = await loop.run_in_executor(self._executor, self._open)
            except HypervisorError as exc:
                self.last_error = str(exc)
                if initial:
                    self._notify(False, str(exc))
                    initial = False
                logger.warning("libvirt connection to %s failed (%s); retrying in %.1fs", self.uri, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._max_backoff)
                continue
            with self._lock:
                self._conn = conn
            self.connects += 1
            self.last_error = ""
            self._connected.set()
            logger.info("connected to libvirt at %s", self.uri)
            self._notify(True, "connected")
            return

    def _open(self) -> libvirt.virConnect:
        """Blocking: open, test, and register callbacks (runs in the thread pool)."""
        try:
            conn = libvirt.openAuth(self.uri, _AUTH, 0)
        except libvirt.libvirtError as exc:
            raise HypervisorUnavailable(f"cannot connect to {self.uri}: {exc.get_error_message()}") from exc
        if conn is None:
            raise HypervisorUnavailable(f"cannot connect to {self.uri}")
        try:
            conn.getLibVersion()  # nova's _test_connection
            if not self.uri.startswith("test://"):
                try:
                    conn.setKeepAlive(*self._keepalive)
                except libvirt.libvirtError as exc:
                    logger.debug("keepalive not supported on %s: %s", self.uri, exc)
            self._callback_ids = [
                conn.domainEventRegisterAny(None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE,
                                            self._lifecycle_callback, None),
            ]
            try:
                self._callback_ids.append(conn.domainEventRegisterAny(
                    None, libvirt.VIR_DOMAIN_EVENT_ID_AGENT_LIFECYCLE, self._agent_callback, None))
            except libvirt.libvirtError as exc:  # test:// has no agents
                logger.debug("%s has no agent lifecycle events: %s", self.uri, exc)
            try:
                self._callback_ids.append(conn.domainEventRegisterAny(
                    None, libvirt.VIR_DOMAIN_EVENT_ID_REBOOT, self._reboot_callback, None))
            except libvirt.libvirtError as exc:
                logger.debug("%s has no reboot events: %s", self.uri, exc)
            try:
                conn.registerCloseCallback(self._close_callback, None)
            except libvirt.libvirtError as exc:
                logger.debug("%s does not support close callbacks: %s", self.uri, exc)
        except libvirt.libvirtError as exc:
            self._close_quietly(conn)
            raise translate(exc, f"setting up connection to {self.uri}") from exc
        return conn

    def _lifecycle_callback(self, _conn: libvirt.virConnect, dom: libvirt.virDomain, event: int,
                            detail: int, _opaque: Any) -> None:
        # Native event thread: capture what we need and hand off; never call back into libvirt here.
        item = LifecycleEvent(dom.UUIDString(), event, detail, time.monotonic(), time.time())
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._deliver, item)

    def _agent_callback(self, _conn: libvirt.virConnect, dom: libvirt.virDomain, state: int, _reason: int,
                        _opaque: Any) -> None:
        item = AgentEvent(dom.UUIDString(), state == libvirt.VIR_CONNECT_DOMAIN_EVENT_AGENT_LIFECYCLE_STATE_CONNECTED)
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._deliver_agent, item)

    def _reboot_callback(self, _conn: libvirt.virConnect, dom: libvirt.virDomain, _opaque: Any) -> None:
        item = AgentEvent(dom.UUIDString(), False, rebooted=True)
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._deliver_agent, item)

    def _deliver_agent(self, item: AgentEvent) -> None:
        for sink in self._agent_sinks:
            try:
                sink(item)
            except Exception:
                logger.exception("agent event sink failed for %s", item)

    def _deliver(self, item: LifecycleEvent) -> None:
        for sink in self._event_sinks:
            try:
                sink(item)
            except Exception:  # a broken sink must not stop the others
                logger.exception("event sink failed for %s", item)

    def _close_callback(self, conn: libvirt.virConnect, reason: int, _opaque: Any) -> None:
        reasons = {0: "error", 1: "end of file", 2: "keepalive timeout", 3: "client requested"}
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._lost, conn, f"connection closed: {reasons.get(reason, reason)}")

    def _lost(self, conn: libvirt.virConnect, reason: str) -> None:
        """On the loop: the given connection broke. Only the current one counts (nova does the same)."""
        with self._lock:
            if conn is not self._conn:
                return
            self._conn = None
        self._connected.clear()
        self.last_error = reason
        logger.warning("lost libvirt connection to %s: %s", self.uri, reason)
        self._notify(False, reason)
        if self._loop is not None:
            self._loop.run_in_executor(self._executor, self._close_quietly, conn)
        self._schedule_reconnect()

    def _detach(self) -> libvirt.virConnect | None:
        with self._lock:
            conn, self._conn = self._conn, None
        self._connected.clear()
        return conn

    def _close_quietly(self, conn: libvirt.virConnect) -> None:
        for cb_id in self._callback_ids:
            try:
                conn.domainEventDeregisterAny(cb_id)
            except libvirt.libvirtError:
                pass
        try:
            conn.unregisterCloseCallback()
        except libvirt.libvirtError:
            pass
        try:
            conn.close()
        except libvirt.libvirtError:
            pass

    def _notify(self, connected: bool, reason: str) -> None:
        for listener in self._state_listeners:
            try:
                listener(connected, reason)
            except Exception:
                logger.exception("connection state listener failed")

    def simulate_event(self, uuid: str, event: int, detail: int) -> None:
        """Feed a synthetic lifecycle event through the same hand-off (tests and benchmarks)."""
        self._deliver(LifecycleEvent(uuid, event, detail, time.monotonic(), time.time()))

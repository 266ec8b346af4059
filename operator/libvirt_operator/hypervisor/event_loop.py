"""libvirt's default event loop, run in one native daemon thread for the whole process.

It must be registered before any connection is opened (libvirt binds a connection's event delivery and
keepalive to the implementation registered at open time), so ``ensure_running`` is idempotent and called
by the connection owner before its first open.
"""

from __future__ import annotations

import logging
import threading

import libvirt

logger = logging.getLogger(__name__)

_lock = threading.Lock()
_thread: threading.Thread | None = None


def _run() -> None:
    while True:
        try:
            libvirt.virEventRunDefaultImpl()
        except libvirt.libvirtError:  # a failing iteration must not end event delivery
            logger.exception("libvirt event loop iteration failed")


def _ignore_errors(_ctx: object, _err: object) -> None:
    # libvirt prints every error to stderr by default; errors reach us as exceptions instead.
    return None


def ensure_running() -> None:
    global _thread
    with _lock:
        if _thread is not None:
            return
        libvirt.registerErrorHandler(_ignore_errors, None)
        libvirt.virEventRegisterDefaultImpl()
        _thread = threading.Thread(target=_run, name="libvirt-event-loop", daemon=True)
        _thread.start()
        logger.debug("libvirt native event loop started")

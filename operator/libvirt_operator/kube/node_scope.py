"""Node-scoped VirtualMachine watch: the pure decisions (README, "Architecture").

Each operator lists and watches only the VirtualMachines of its node, filtered by the API server with the
field selector ``spec.nodeName=<node>`` (the CRD declares ``.spec.nodeName`` in ``selectableFields``:
Kubernetes 1.31 or later, where that is beta and on by default; GA in 1.32). An API server that refuses
the selector gets today's client-side filtering instead.

On a selector watch a VM whose spec.nodeName moves to another node no longer matches: the API server
sends DELETED. That is a move, not a deletion: its domain here is removed as for any VM that now belongs to
another node (disks kept when the storage is shared), never by the clean-up of a VM deleted without our
finalizer. kube-apiserver's DELETED carries the object as it was *before* the change (this node's name, no
deletionTimestamp: the watch cache's ``PrevObject`` with the event's resourceVersion), which is exactly what
a forced deletion (no finalizer) carries too; the project's emulator sends the object as it now is (the
other node's name). So: another node's name in the body is a move; a deletionTimestamp is a deletion; a
body of this node without one is asked of the API (GET: the VM with the same uid still exists, or not).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Any

NODE_FIELD = "spec.nodeName"


class Deleted(enum.Enum):
    """What a DELETED watch event means for this node's operator."""

    DELETED = "deleted"  # the object is gone from the API
    MOVED_AWAY = "moved-away"  # it still exists, but no longer on this node (node-scoped watch only)
    ASK = "ask"  # the body cannot tell (kube-apiserver's DELETED of a move = a forced deletion's): GET it


def node_selector(node_name: str) -> str:
    """The field selector of one node's VirtualMachines (for the watch and the operator's own lists)."""
    return f"{NODE_FIELD}={node_name}"


def selector_refused(status: int | None, message: str) -> bool:
    """Whether an API error says that this server cannot filter VirtualMachines by spec.nodeName: a 400
    ``field label not supported`` (Kubernetes older than 1.31, the feature gate off, or a CRD without
    selectableFields). Anything else is an ordinary failure, retried as before."""
    return status == 400 and "field label not supported" in message


def deleted_meaning(body: Mapping[str, Any], node_name: str, *, node_scoped: bool) -> Deleted:
    """A DELETED event's body: the object gone, moved to another node, or (both look alike) ask the API.

    Only a node-scoped watch reports a move as DELETED; a deletionTimestamp always means a deletion."""
    if not node_scoped:
        return Deleted.DELETED  # an unfiltered watch reports a change of node as MODIFIED
    if (body.get("metadata") or {}).get("deletionTimestamp"):
        return Deleted.DELETED
    if (body.get("spec") or {}).get("nodeName") == node_name:
        return Deleted.ASK
    return Deleted.MOVED_AWAY


def still_exists(uid: str, current: Mapping[str, Any] | None) -> bool:
    """After an ambiguous DELETED: whether the VM the event was about is still in the API (the GET's answer,
    None for 404). A VM of the same name but another uid is a new object: the old one was deleted."""
    return current is not None and str((current.get("metadata") or {}).get("uid")) == uid

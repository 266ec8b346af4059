"""The VirtualMachine informer's pure parts (kube/vm_watch.py): reading watch lines, and which cached VMs a
relist no longer has. Its behaviour against an API server: tests/unit/test_node_scope.py (emulator) and
tests/e2e/test_node_scoped_watch.py (the real kube-apiserver)."""

from __future__ import annotations

import json

import pytest

from libvirt_operator.kube.client import KubeError
from libvirt_operator.kube.vm_watch import Expired, modified_version, read_event, vanished


def _line(event: object) -> bytes:
    return json.dumps(event).encode() + b"\n"


def test_an_event_line_gives_its_type_object_and_resource_version() -> None:
    obj = {"metadata": {"name": "vm", "resourceVersion": "42"}, "spec": {}}
    event = read_event(_line({"type": "MODIFIED", "object": obj}))
    assert event is not None and event.type == "MODIFIED" and event.object == obj
    assert event.resource_version == "42"


def test_a_bookmark_carries_only_the_version_and_a_blank_line_is_nothing() -> None:
    event = read_event(_line({"type": "BOOKMARK", "object": {"kind": "VirtualMachine",
                                                             "metadata": {"resourceVersion": "77"}}}))
    assert event is not None and event.type == "BOOKMARK" and event.resource_version == "77"
    assert read_event(b"\n") is None


def test_the_watch_caches_410_error_event_means_relist() -> None:
    gone = {"type": "ERROR", "object": {"kind": "Status", "status": "Failure", "code": 410, "reason": "Expired",
                                        "message": "too old resource version: 5 (981)"}}
    with pytest.raises(Expired, match="too old resource version"):
        read_event(_line(gone))


@pytest.mark.parametrize("line", [
    _line({"type": "ERROR", "object": {"code": 500, "reason": "InternalError", "message": "etcd"}}),
    b"not json\n",
    _line({"type": "ADDED"}),
    _line(["ADDED"]),
])
def test_any_other_error_or_malformed_line_is_a_failure_resumed_from_the_last_version(line: bytes) -> None:
    with pytest.raises(KubeError) as failure:
        read_event(line)
    assert not isinstance(failure.value, Expired)


def _vm(name: str, uid: str) -> dict[str, object]:
    return {"metadata": {"namespace": "default", "name": name, "uid": uid}}


def test_a_relist_reports_the_cached_vms_it_lacks_or_lists_with_another_uid() -> None:
    held = {("default", "kept"): "u1", ("default", "gone"): "u2", ("default", "recreated"): "u3"}
    listed = [_vm("kept", "u1"), _vm("recreated", "u9"), _vm("new", "u4")]
    assert sorted(vanished(held, listed)) == [("default", "gone"), ("default", "recreated")]
    assert vanished({}, listed) == []


def _wire(event: object) -> bytes:
    """As the API server writes it: compact JSON, one event per line."""
    return json.dumps(event, separators=(",", ":")).encode() + b"\n"


def _modified(metadata: dict[str, object], event_type: str = "MODIFIED") -> bytes:
    return _wire({"type": event_type, "object": {"apiVersion": "virt.libvirt-operator.dev/v1alpha1",
                                                 "kind": "VirtualMachine", "metadata": metadata,
                                                 "spec": {"nodeName": "n1"}, "status": {"phase": "Running"}}})


def test_a_modified_line_tells_its_objects_uid_and_version_without_decoding() -> None:
    line = _modified({"name": "vm", "namespace": "default", "uid": "u-1", "resourceVersion": "981"})
    assert modified_version(line) == ("u-1", "981")


@pytest.mark.parametrize("event_type", ["ADDED", "DELETED", "BOOKMARK"])
def test_only_modified_lines_are_read_off_raw(event_type: str) -> None:
    line = _modified({"name": "vm", "uid": "u-1", "resourceVersion": "981"}, event_type)
    assert modified_version(line) is None


@pytest.mark.parametrize("metadata", [
    {"name": "vm", "uid": "u-1", "resourceVersion": "981", "labels": {"uid": "forged"}},
    {"name": "vm", "uid": "u-1", "resourceVersion": "981", "annotations": {"resourceVersion": "5"}},
    {"name": "vm", "uid": "u-1", "resourceVersion": "981",
     "ownerReferences": [{"kind": "X", "name": "o", "uid": "u-owner"}]},
])
def test_a_line_naming_uid_or_version_twice_is_left_to_the_decoder(metadata: dict[str, object]) -> None:
    assert modified_version(_modified(metadata)) is None


def test_a_quoted_key_inside_a_string_value_is_not_taken_for_a_key() -> None:
    line = _modified({"name": "vm", "uid": "u-1", "resourceVersion": "981",
                      "annotations": {"note": '"uid":"forged" "resourceVersion":"5"'}})
    assert modified_version(line) == ("u-1", "981")

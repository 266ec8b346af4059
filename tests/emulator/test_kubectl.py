"""The real kubectl (v1.34) against the emulator: apply, get, describe, watch, patch, delete."""

from __future__ import annotations

import json
import queue
import subprocess
import threading
from pathlib import Path

import kubernetes
import pytest

from tests.emulator.conftest import GROUP, PLURAL, REPO, VERSION, EmulatorThread, Kubectl, gadget, make_api_client

CRDS = REPO / "deploy" / "crds"
VM_CRD = "virtualmachines.virt.libvirt-operator.dev"
GADGET = """
apiVersion: fixture.emulator.test/v1
kind: Gadget
metadata:
  name: g1
  labels: {{tier: web}}
spec:
  color: {color}
  size: {size}
  parts: [{{name: p1}}]
"""


def manifest(tmp_path: Path, color: str = "red", size: int = 2, text: str = GADGET) -> str:
    path = tmp_path / f"gadget-{color}-{size}.yaml"
    path.write_text(text.format(color=color, size=size))
    return str(path)


def test_apply_crds_directory_registers_the_project_crd_and_delete_removes_it(kubectl: Kubectl) -> None:
    assert "created" in kubectl.run("apply", "-f", str(CRDS)).stdout
    kubectl.run("wait", "--for=condition=Established", f"crd/{VM_CRD}", "--timeout=10s")
    assert kubectl.run("get", "lvm").stderr.strip() == "No resources found in default namespace."
    kubectl.run("apply", "-f", str(REPO / "examples" / "minimal.yaml"))
    assert kubectl.json("get", "virtualmachines", "minimal")["spec"]["nodeName"] == "dev-node"
    assert "unchanged" in kubectl.run("apply", "-f", str(CRDS)).stdout
    kubectl.run("delete", "-f", str(CRDS))
    missing = kubectl.run("get", "lvm", check=False)
    # kubectl's discovery cache may still know the type: then the list itself is the 404.
    assert missing.returncode != 0
    assert "doesn't have a resource type" in missing.stderr or "could not find the requested resource" in \
        missing.stderr


def test_apply_creates_configures_and_leaves_unchanged(kubectl: Kubectl, tmp_path: Path) -> None:
    assert "gadget.fixture.emulator.test/g1 created" in kubectl.run("apply", "-f", manifest(tmp_path)).stdout
    assert "configured" in kubectl.run("apply", "--server-side=false", "-f", manifest(tmp_path, size=3)).stdout
    got = kubectl.json("get", "gadget", "g1")
    assert got["spec"]["size"] == 3 and got["metadata"]["generation"] == 2
    assert "kubectl.kubernetes.io/last-applied-configuration" in got["metadata"]["annotations"]
    assert "serverside-applied" in kubectl.run("apply", "--server-side", "-f", manifest(tmp_path, size=4)).stdout
    assert kubectl.json("get", "gdg", "g1")["spec"]["size"] == 4


def test_apply_rejects_unknown_fields_and_reports_schema_violations(kubectl: Kubectl, tmp_path: Path) -> None:
    unknown = kubectl.run("apply", "-f", manifest(tmp_path, text=GADGET + "  bogus: 1\n"), check=False)
    assert unknown.returncode != 0 and 'unknown field "spec.bogus"' in unknown.stderr
    invalid = kubectl.run("apply", "-f", manifest(tmp_path, color="pink"), check=False)
    assert invalid.returncode != 0
    assert 'spec.color: Unsupported value: "pink": supported values: "red", "green", "blue"' in invalid.stderr


def test_get_prints_printer_columns_and_wide_adds_priority_ones(kubectl: Kubectl, tmp_path: Path) -> None:
    kubectl.run("apply", "-f", manifest(tmp_path))
    lines = kubectl.run("get", "gadgets").stdout.splitlines()
    assert lines[0].split() == ["NAME", "COLOR", "SIZE", "PHASE", "AGE"]
    assert lines[1].split()[:3] == ["g1", "red", "2"]
    assert kubectl.run("get", "gdg", "-o", "wide").stdout.splitlines()[0].split()[-1] == "READY"
    assert kubectl.run("get", "fixtures", "-o", "name").stdout.strip() == "gadget.fixture.emulator.test/g1"
    assert kubectl.run("get", "gdg", "-l", "tier=web", "-o", "name").stdout.strip().endswith("/g1")
    assert kubectl.run("get", "gdg", "-l", "tier!=web", "-o", "name").stdout.strip() == ""
    namespaces = kubectl.run("get", "namespaces").stdout.splitlines()
    assert namespaces[0].split() == ["NAME", "STATUS", "AGE"] and namespaces[1].split()[:2] == ["default", "Active"]


def test_get_watch_prints_changes(kubectl: Kubectl, tmp_path: Path) -> None:
    kubectl.run("apply", "-f", manifest(tmp_path))
    process = subprocess.Popen(kubectl.command("get", "gadgets", "-w", "--output-watch-events"),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: queue.Queue[str] = queue.Queue()
    assert process.stdout is not None
    def pump() -> None:
        for line in process.stdout or ():
            lines.put(line)

    threading.Thread(target=pump, daemon=True).start()
    try:
        assert lines.get(timeout=20).split()[:3] == ["EVENT", "NAME", "COLOR"]
        assert lines.get(timeout=20).split()[:3] == ["ADDED", "g1", "red"]
        kubectl.run("patch", "gadget", "g1", "--type=merge", "-p", '{"spec":{"color":"blue"}}')
        assert lines.get(timeout=20).split()[:3] == ["MODIFIED", "g1", "blue"]
        kubectl.run("delete", "gadget", "g1")
        assert lines.get(timeout=20).split()[:2] == ["DELETED", "g1"]
    finally:
        process.kill()
        process.wait(10)


def test_describe_custom_object_shows_its_events(emu: EmulatorThread, kubectl: Kubectl) -> None:
    kubectl.run("apply", "-f", str(CRDS))
    kubectl.run("apply", "-f", str(REPO / "examples" / "minimal.yaml"))
    vm = kubectl.json("get", "lvm", "minimal")
    client = make_api_client(emu.url)
    try:
        kubernetes.client.CoreV1Api(client).create_namespaced_event("default", {
            "metadata": {"generateName": "minimal."},
            "involvedObject": {"apiVersion": vm["apiVersion"], "kind": vm["kind"], "name": "minimal",
                               "namespace": "default", "uid": vm["metadata"]["uid"]},
            "reason": "DomainStarted", "message": "the domain is running", "type": "Normal",
            "source": {"component": "libvirt-operator"}, "count": 1,
            "firstTimestamp": vm["metadata"]["creationTimestamp"],
            "lastTimestamp": vm["metadata"]["creationTimestamp"]})
    finally:
        client.close()
    described = kubectl.run("describe", "lvm", "minimal").stdout
    assert "Name:         minimal" in described
    events = described.split("Events:")[1]
    assert "DomainStarted" in events and "the domain is running" in events and "libvirt-operator" in events
    assert kubectl.run("get", "events", "-o", "name").stdout.count("event/minimal.") == 1


def test_patch_types_label_annotate_and_cordon_on_a_node(kubectl: Kubectl) -> None:
    kubectl.run("apply", "-f", "-", input='{"apiVersion":"v1","kind":"Node","metadata":{"name":"n1"}}')
    kubectl.run("label", "node", "n1", "role=hypervisor")
    kubectl.run("annotate", "node", "n1", "note=x")
    kubectl.run("cordon", "n1")
    kubectl.run("patch", "node", "n1", "--subresource=status", "-p",
                '{"status":{"conditions":[{"type":"Ready","status":"True"}]}}')
    kubectl.run("patch", "node", "n1", "--type=json", "-p",
                '[{"op":"add","path":"/metadata/labels/extra","value":"1"}]')
    node = kubectl.json("get", "node", "n1")
    assert node["metadata"]["labels"] == {"role": "hypervisor", "extra": "1"}
    assert node["metadata"]["annotations"]["note"] == "x"
    assert node["spec"]["unschedulable"] is True
    assert node["status"]["conditions"] == [{"type": "Ready", "status": "True"}]
    assert kubectl.run("get", "nodes").stdout.splitlines()[1].split()[:2] == ["n1", "Ready,SchedulingDisabled"]


def test_delete_waits_on_finalizers_and_namespaces_come_and_go(kubectl: Kubectl, emu: EmulatorThread) -> None:
    kubectl.run("create", "namespace", "scratch")
    body = gadget("held", "scratch")
    body["metadata"]["finalizers"] = ["example.com/hold"]
    kubectl.run("create", "-f", "-", input=json.dumps(body))
    kubectl.run("delete", "gadget", "held", "-n", "scratch", "--wait=false")
    held = kubectl.json("get", "gadget", "held", "-n", "scratch")
    assert held["metadata"]["deletionTimestamp"]
    kubectl.run("patch", "gadget", "held", "-n", "scratch", "--type=merge", "-p", '{"metadata":{"finalizers":null}}')
    assert emu.call(emu.emulator.get_object, GROUP, VERSION, PLURAL, "scratch", "held") is None
    kubectl.run("delete", "namespace", "scratch")
    assert kubectl.run("get", "namespace", "scratch", check=False).returncode != 0


@pytest.mark.parametrize("command", [("get", "leases", "-A"), ("get", "crd"), ("get", "events")])
def test_builtin_listings_print(kubectl: Kubectl, command: tuple[str, ...]) -> None:
    kubectl.run(*command)


def test_typed_create_commands_work_although_they_send_protobuf(kubectl: Kubectl) -> None:
    kubectl.run("create", "namespace", "typed")
    kubectl.run("create", "configmap", "settings", "-n", "typed", "--from-literal=a=b")
    assert kubectl.json("get", "configmap", "settings", "-n", "typed")["data"] == {"a": "b"}
    assert kubectl.json("get", "namespace", "typed")["status"]["phase"] == "Active"

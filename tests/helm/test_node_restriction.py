"""The chart's node restriction (templates/node-restriction.yaml) on the real control plane: a
ValidatingAdmissionPolicy lets each operator pod write only its own Node and the VirtualMachines of its own
node, by the node name the API server puts in the user info of a pod-bound ServiceAccount token.

No kubelet is needed: the admin creates a Pod already bound to a node (spec.nodeName; it stays Pending) and
mints a token bound to it (`kubectl create token --bound-object-kind Pod`), which is what the kubelet asks
the API server for on behalf of a real operator pod."""

from __future__ import annotations

import contextlib
import json
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from libvirt_operator.api.constants import GROUP, MIGRATING_ANNOTATION, MIGRATION_PLURAL, PLURAL, VERSION
from testbed.control_plane import RESERVED_LABEL, ControlPlane
from tests.conftest import wait_for
from tests.helm.conftest import CHART, Helm

NODE_NAME_CLAIM = "authentication.kubernetes.io/node-name"
VM_RESOURCE = f"{PLURAL}.{GROUP}"


# --- helpers (also used by test_chart_on_real_api.py) ----------------------------------------------------


def token_kubeconfig(plane: ControlPlane, path: Path, token: str) -> Path:
    """A kubeconfig of one bearer token, straight to the API server over TLS."""
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "pod",
        "clusters": [{"name": "c", "cluster": {"server": plane.url, "certificate-authority": str(plane.ca_file)}}],
        "users": [{"name": "sa", "user": {"token": token}}],
        "contexts": [{"name": "pod", "context": {"cluster": "c", "user": "sa"}}],
    }))
    path.chmod(0o600)
    return path


@contextlib.contextmanager
def pod_on_node(plane: ControlPlane, namespace: str, service_account: str, node: str, name: str) -> Iterator[str]:
    """A token bound to a Pod of ``service_account`` on ``node``, as the kubelet obtains one for its pod.

    The Pod is created already bound (no scheduler), tolerates every taint (the node lifecycle controller
    taints a node without kubelet, and would evict it) and is force-deleted afterwards (no kubelet confirms
    a graceful deletion); the token stops working with it."""
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": namespace},
           "spec": {"nodeName": node, "serviceAccountName": service_account, "tolerations": [{"operator": "Exists"}],
                    "containers": [{"name": "operator", "image": "registry.invalid/libvirt-operator:none"}]}}
    created = json.loads(plane.kubectl("create", "-o", "json", "-f", "-", input_text=json.dumps(pod)))
    try:
        yield plane.kubectl("create", "token", service_account, "-n", namespace, "--duration=1h",
                            "--bound-object-kind", "Pod", "--bound-object-name", name,
                            "--bound-object-uid", created["metadata"]["uid"]).strip()
    finally:
        plane.kubectl("delete", "pod", name, "-n", namespace, "--grace-period=0", "--force", "--ignore-not-found",
                      check=False)


@dataclass
class Caller:
    """kubectl as one identity (a token's kubeconfig, or the admin's)."""

    kubectl_bin: str
    kubeconfig: Path
    extra: tuple[str, ...] = ()

    def run(self, *args: str, input_text: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run([self.kubectl_bin, "--kubeconfig", str(self.kubeconfig), *self.extra, *args],
                              input=input_text, capture_output=True, text=True, timeout=60)

    def ok(self, *args: str, input_text: str | None = None) -> str:
        done = self.run(*args, input_text=input_text)
        assert done.returncode == 0, f"kubectl {' '.join(args)} was refused: {done.stderr}"
        return done.stdout

    def refused(self, policy: str, *args: str, input_text: str | None = None) -> str:
        """The error of a request that the node restriction policy must refuse (403 Forbidden)."""
        done = self.run(*args, input_text=input_text)
        assert done.returncode != 0, f"kubectl {' '.join(args)} was allowed"
        assert "(Forbidden)" in done.stderr and f"ValidatingAdmissionPolicy '{policy}'" in done.stderr, done.stderr
        return done.stderr

    def get(self, *args: str) -> dict[str, Any]:
        found: dict[str, Any] = json.loads(self.ok("get", "-o", "json", *args))
        return found

    def whoami(self) -> dict[str, Any]:
        review: dict[str, Any] = json.loads(self.ok("auth", "whoami", "-o", "json"))
        user: dict[str, Any] = review["status"]["userInfo"]
        return user


def merge(patch: dict[str, Any]) -> tuple[str, ...]:
    return ("--type", "merge", "-p", json.dumps(patch))


def wait_until_enforced(kubectl_bin: str, plane: ControlPlane, user: str, node: str, policy: str) -> None:
    """Until the API server enforces ``policy``, a second or two after it (and its binding) were created: the
    ServiceAccount ``user``, impersonated without a node claim, is refused a dry-run write of ``node``."""
    impersonated = Caller(kubectl_bin, plane.admin_kubeconfig, (f"--as={user}",))

    def enforced() -> bool:
        done = impersonated.run("patch", "node", node, "--dry-run=server", *merge({"metadata": {"labels": {"p": "1"}}}))
        return done.returncode != 0 and f"ValidatingAdmissionPolicy '{policy}'" in done.stderr
    wait_for(enforced, timeout=30, what=f"policy {policy} to be enforced")


def vm_manifest(name: str, namespace: str, node: str) -> dict[str, Any]:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "VirtualMachine",
            "metadata": {"name": name, "namespace": namespace}, "spec": {"nodeName": node, "memory": "64Mi"}}


# --- fixtures ----------------------------------------------------------------------------------------------


@dataclass
class Release:
    name: str
    namespace: str
    service_account: str
    policy: str

    @property
    def user(self) -> str:
        return f"system:serviceaccount:{self.namespace}:{self.service_account}"


@pytest.fixture(scope="module")
def release(helm: Helm, control_plane: ControlPlane) -> Iterator[Release]:
    """The chart installed with Helm under a release and namespace of this module's own (reserved: the
    end-to-end tests' VM purge leaves its VMs alone); its DaemonSet selects no node."""
    name = f"nr-{uuid.uuid4().hex[:6]}"
    admin = ["--kubeconfig", str(control_plane.admin_kubeconfig)]
    control_plane.kubectl("create", "namespace", name)
    control_plane.kubectl("label", "namespace", name, f"{RESERVED_LABEL}={name}")
    values = helm.values_file({"nodeSelector": {"virt.libvirt-operator.dev/hypervisor": None,
                                                "testbed.libvirt-operator.dev/no-such-node": "true"}})
    try:
        helm.run("install", name, str(CHART), "--namespace", name, "--values", str(values), *admin)
        docs = [d for d in yaml.safe_load_all(helm.run("get", "manifest", name, "-n", name, *admin).stdout) if d]
        names = {d["kind"]: d["metadata"]["name"] for d in docs}
        assert names["ValidatingAdmissionPolicyBinding"] == names["ValidatingAdmissionPolicy"]
        yield Release(name, name, names["ServiceAccount"], names["ValidatingAdmissionPolicy"])
    finally:
        helm.run("uninstall", name, "--namespace", name, "--wait", *admin, check=False)
        control_plane.kubectl("delete", "namespace", name, "--wait=false", "--ignore-not-found", check=False)


@dataclass
class Scene:
    """Nodes A and B, a VM on each, an operator pod on A, and kubectl as that pod, as the same
    ServiceAccount without a pod-bound token, and as the admin."""

    release: Release
    node_a: str
    node_b: str
    vm_a: str
    vm_b: str
    pod: Caller
    unbound: Caller
    admin: Caller

    @property
    def policy(self) -> str:
        return self.release.policy

    @property
    def ns(self) -> tuple[str, ...]:
        return ("-n", self.release.namespace)

    def vm_message(self, vm_node: str, *, would: bool = False) -> str:
        return (f"this operator pod runs on node {self.node_a} and may only write VirtualMachines of node "
                f"{self.node_a} (this one {'would be' if would else 'is'} on {vm_node})")

    def node_message(self, node: str) -> str:
        return f"this operator pod runs on node {self.node_a} and may only write Node {self.node_a} (not {node})"


@pytest.fixture
def scene(release: Release, control_plane: ControlPlane, kubectl_bin: str, tmp_path: Path) -> Iterator[Scene]:
    tag = uuid.uuid4().hex[:6]
    node_a, node_b = f"{release.name}-a-{tag}", f"{release.name}-b-{tag}"
    vm_a, vm_b = f"vm-a-{tag}", f"vm-b-{tag}"
    admin = Caller(kubectl_bin, control_plane.admin_kubeconfig)
    nodes = [{"apiVersion": "v1", "kind": "Node", "metadata": {"name": n}} for n in (node_a, node_b)]
    vms = [vm_manifest(vm_a, release.namespace, node_a), vm_manifest(vm_b, release.namespace, node_b)]
    with contextlib.ExitStack() as cleanup:
        cleanup.callback(admin.run, "delete", "node", node_a, node_b, "--ignore-not-found")
        admin.ok("create", "-f", "-", input_text=json.dumps({"apiVersion": "v1", "kind": "List", "items": nodes}))
        cleanup.callback(admin.run, "delete", VM_RESOURCE, "-n", release.namespace, vm_a, vm_b, "--ignore-not-found")
        admin.ok("create", "-f", "-", input_text=json.dumps({"apiVersion": "v1", "kind": "List", "items": vms}))
        token = cleanup.enter_context(pod_on_node(control_plane, release.namespace, release.service_account, node_a,
                                                  f"operator-{tag}"))
        pod = Caller(kubectl_bin, token_kubeconfig(control_plane, tmp_path / "pod.kubeconfig", token))
        unbound_token = control_plane.kubectl("create", "token", release.service_account, "-n", release.namespace,
                                              "--duration=1h").strip()
        unbound = Caller(kubectl_bin, token_kubeconfig(control_plane, tmp_path / "unbound.kubeconfig", unbound_token))
        wait_until_enforced(kubectl_bin, control_plane, release.user, node_a, release.policy)
        yield Scene(release, node_a, node_b, vm_a, vm_b, pod, unbound, admin)


# --- the token ---------------------------------------------------------------------------------------------


def test_a_pod_bound_token_carries_its_pods_node_and_an_unbound_one_none(scene: Scene) -> None:
    user = scene.pod.whoami()
    assert user["username"] == scene.release.user
    assert user["extra"][NODE_NAME_CLAIM] == [scene.node_a]
    assert user["extra"]["authentication.kubernetes.io/pod-name"][0].startswith("operator-")
    unbound = scene.unbound.whoami()
    assert unbound["username"] == user["username"]
    assert NODE_NAME_CLAIM not in (unbound.get("extra") or {})


# --- VirtualMachines ---------------------------------------------------------------------------------------


def test_operator_pod_writes_the_vms_of_its_node_their_status_and_finalizer(scene: Scene) -> None:
    pod, ns = scene.pod, scene.ns
    pod.ok("patch", VM_RESOURCE, scene.vm_a, *ns, *merge({"metadata": {"annotations": {"example.com/seen": "1"}}}))
    pod.ok("patch", VM_RESOURCE, scene.vm_a, *ns, "--subresource", "status",
           *merge({"status": {"phase": "Running", "nodeName": scene.node_a}}))
    finalizer = f"{GROUP}/cleanup"
    pod.ok("patch", VM_RESOURCE, scene.vm_a, *ns, "--type", "json",
           "-p", json.dumps([{"op": "add", "path": "/metadata/finalizers", "value": [finalizer]}]))
    vm = scene.admin.get(VM_RESOURCE, scene.vm_a, *ns)
    assert vm["metadata"]["annotations"]["example.com/seen"] == "1"
    assert vm["status"]["phase"] == "Running" and vm["metadata"]["finalizers"] == [finalizer]
    pod.ok("patch", VM_RESOURCE, scene.vm_a, *ns, *merge({"metadata": {"finalizers": None}}))
    assert not scene.admin.get(VM_RESOURCE, scene.vm_a, *ns)["metadata"].get("finalizers")


def test_operator_pod_is_refused_the_vms_of_another_node_and_their_status(scene: Scene) -> None:
    pod, ns = scene.pod, scene.ns
    err = pod.refused(scene.policy, "patch", VM_RESOURCE, scene.vm_b, *ns,
                      *merge({"metadata": {"annotations": {"example.com/seen": "1"}}}))
    assert scene.vm_message(scene.node_b) in err
    err = pod.refused(scene.policy, "patch", VM_RESOURCE, scene.vm_b, *ns, "--subresource", "status",
                      *merge({"status": {"phase": "Failed"}}))
    assert scene.vm_message(scene.node_b) in err
    vm = scene.admin.get(VM_RESOURCE, scene.vm_b, *ns)
    assert "example.com/seen" not in (vm["metadata"].get("annotations") or {}) and "status" not in vm


def test_operator_pod_cannot_move_a_vm_of_its_node_to_another(scene: Scene) -> None:
    err = scene.pod.refused(scene.policy, "patch", VM_RESOURCE, scene.vm_a, *scene.ns,
                            *merge({"spec": {"nodeName": scene.node_b}}))
    assert scene.vm_message(scene.node_b, would=True) in err
    assert scene.admin.get(VM_RESOURCE, scene.vm_a, *scene.ns)["spec"]["nodeName"] == scene.node_a


def test_creates_and_deletes_stay_confined_to_the_pods_node_if_the_rbac_is_widened(
        scene: Scene, control_plane: ControlPlane) -> None:
    """The chart's ClusterRole creates and deletes no VM and no Node; the policy holds without it."""
    wider = f"{scene.release.name}-wider"
    user = scene.release.user
    role = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": wider},
            "rules": [{"apiGroups": [GROUP], "resources": [PLURAL], "verbs": ["create", "delete"]},
                      {"apiGroups": [""], "resources": ["nodes"], "verbs": ["delete"]}]}
    binding = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": {"name": wider},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": wider},
               "subjects": [{"kind": "ServiceAccount", "name": scene.release.service_account,
                             "namespace": scene.release.namespace}]}
    try:
        scene.admin.ok("create", "-f", "-", input_text=json.dumps({"apiVersion": "v1", "kind": "List",
                                                                    "items": [role, binding]}))
        wait_for(lambda: scene.admin.run("auth", "can-i", "delete", "nodes", f"--as={user}").stdout.strip() == "yes",
                 timeout=30, what="the wider ClusterRole to be in force")
        pod, ns, tag = scene.pod, scene.ns, scene.vm_a.removeprefix("vm-a-")
        err = pod.refused(scene.policy, "create", "-f", "-",
                          input_text=json.dumps(vm_manifest(f"vm-new-{tag}", scene.release.namespace, scene.node_b)))
        assert scene.vm_message(scene.node_b, would=True) in err
        assert scene.vm_message(scene.node_b) in pod.refused(scene.policy, "delete", VM_RESOURCE, scene.vm_b, *ns)
        assert scene.node_message(scene.node_b) in pod.refused(scene.policy, "delete", "node", scene.node_b)
        pod.ok("create", "-f", "-", input_text=json.dumps(vm_manifest(f"vm-new-{tag}", scene.release.namespace,
                                                                      scene.node_a)))
        pod.ok("delete", VM_RESOURCE, f"vm-new-{tag}", *ns)
        scene.admin.get(VM_RESOURCE, scene.vm_b, *ns)
        scene.admin.get("node", scene.node_b)
    finally:
        scene.admin.run("delete", "clusterrolebinding,clusterrole", wider, "--ignore-not-found")


# --- Nodes -------------------------------------------------------------------------------------------------


def test_operator_pod_writes_its_own_node_and_its_status(scene: Scene) -> None:
    scene.pod.ok("patch", "node", scene.node_a, *merge({"metadata": {"labels": {f"{GROUP}/schedulable": "true"}}}))
    condition = {"type": "LibvirtReady", "status": "True", "reason": "Connected", "message": "libvirt reachable"}
    scene.pod.ok("patch", "node", scene.node_a, "--subresource", "status",
                 *merge({"status": {"conditions": [condition]}}))
    node = scene.admin.get("node", scene.node_a)
    assert node["metadata"]["labels"][f"{GROUP}/schedulable"] == "true"
    assert any(c["type"] == "LibvirtReady" for c in node["status"]["conditions"])


def test_operator_pod_is_refused_another_node_and_its_status(scene: Scene) -> None:
    err = scene.pod.refused(scene.policy, "patch", "node", scene.node_b,
                            *merge({"metadata": {"labels": {f"{GROUP}/schedulable": "true"}}}))
    assert scene.node_message(scene.node_b) in err
    condition = {"type": "LibvirtReady", "status": "False", "reason": "Sabotage", "message": "x"}
    err = scene.pod.refused(scene.policy, "patch", "node", scene.node_b, "--subresource", "status",
                            *merge({"status": {"conditions": [condition]}}))
    assert scene.node_message(scene.node_b) in err
    node = scene.admin.get("node", scene.node_b)
    assert f"{GROUP}/schedulable" not in (node["metadata"].get("labels") or {})
    assert not any(c["type"] == "LibvirtReady" for c in (node.get("status") or {}).get("conditions") or [])


# --- who else ----------------------------------------------------------------------------------------------


def test_the_service_account_without_a_pod_bound_token_may_write_no_vm_and_no_node(
        scene: Scene, control_plane: ControlPlane, kubectl_bin: str) -> None:
    """Fail closed: a token of the ServiceAccount not bound to a pod on a node (an admin's `kubectl create
    token`), or the ServiceAccount impersonated without the claim, writes nothing, not even node A's."""
    user = scene.release.user
    impersonated = Caller(kubectl_bin, control_plane.admin_kubeconfig, (f"--as={user}",))
    expected = (f"{user} may write VirtualMachines and Nodes only with the token of an operator pod on a node, "
                f"and this request's token names no node")
    for caller in (scene.unbound, impersonated):
        for args in (("patch", VM_RESOURCE, scene.vm_a, *scene.ns, *merge({"metadata": {"labels": {"x": "1"}}})),
                     ("patch", VM_RESOURCE, scene.vm_a, *scene.ns, "--subresource", "status",
                      *merge({"status": {"phase": "Running"}})),
                     ("patch", "node", scene.node_a, *merge({"metadata": {"labels": {"x": "1"}}})),
                     ("patch", "node", scene.node_a, "--subresource", "status",
                      *merge({"status": {"conditions": [{"type": "LibvirtReady", "status": "True"}]}}))):
            assert expected in caller.refused(scene.policy, *args)
        caller.get(VM_RESOURCE, scene.vm_a, *scene.ns)  # reads are not restricted
    assert "x" not in (scene.admin.get("node", scene.node_a)["metadata"].get("labels") or {})


def test_events_and_reads_are_not_restricted(scene: Scene) -> None:
    event = {"apiVersion": "v1", "kind": "Event",
             "metadata": {"generateName": "vm-b-", "namespace": scene.release.namespace},
             "involvedObject": {"apiVersion": f"{GROUP}/{VERSION}", "kind": "VirtualMachine",
                                "namespace": scene.release.namespace, "name": scene.vm_b},
             "reason": "Observed", "message": "an event about another node's VM", "type": "Normal"}
    for caller in (scene.pod, scene.unbound):
        caller.ok("create", "-f", "-", input_text=json.dumps(event))
        assert caller.get(VM_RESOURCE, scene.vm_b, *scene.ns)["spec"]["nodeName"] == scene.node_b
        assert caller.get("node", scene.node_b)["metadata"]["name"] == scene.node_b


def test_the_admin_is_not_restricted(scene: Scene) -> None:
    admin, ns = scene.admin, scene.ns
    admin.ok("patch", VM_RESOURCE, scene.vm_b, *ns, *merge({"metadata": {"annotations": {"example.com/by": "admin"}}}))
    admin.ok("patch", VM_RESOURCE, scene.vm_b, *ns, "--subresource", "status", *merge({"status": {"phase": "Stopped"}}))
    admin.ok("patch", VM_RESOURCE, scene.vm_a, *ns, *merge({"spec": {"nodeName": scene.node_b}}))
    admin.ok("patch", "node", scene.node_b, *merge({"metadata": {"labels": {"example.com/by": "admin"}}}))
    assert admin.get(VM_RESOURCE, scene.vm_a, *ns)["spec"]["nodeName"] == scene.node_b
    # ... and the VM now on node B is out of the operator pod's reach on node A.
    assert scene.vm_message(scene.node_b) in scene.pod.refused(
        scene.policy, "patch", VM_RESOURCE, scene.vm_a, *ns, *merge({"metadata": {"annotations": {"x": "1"}}}))


# --- live migration ------------------------------------------------------------------------------------------

MIGRATION_RESOURCE = f"{MIGRATION_PLURAL}.{GROUP}"


def migration_manifest(name: str, namespace: str, vm: str, target: str) -> dict[str, Any]:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "VirtualMachineMigration",
            "metadata": {"name": name, "namespace": namespace}, "spec": {"vmName": vm, "targetNode": target}}


def test_operator_pod_hands_a_vm_of_its_node_locked_by_a_migration_over_to_another(scene: Scene) -> None:
    pod, ns = scene.pod, scene.ns
    lock = "/metadata/annotations/virt.libvirt-operator.dev~1migrating"
    pod.ok("patch", VM_RESOURCE, scene.vm_a, *ns, *merge({"metadata": {"annotations": {MIGRATING_ANNOTATION: "m1"}}}))
    pod.ok("patch", VM_RESOURCE, scene.vm_a, *ns, "--type", "json", "-p", json.dumps([
        {"op": "test", "path": lock, "value": "m1"}, {"op": "replace", "path": "/spec/nodeName", "value": scene.node_b},
        {"op": "remove", "path": lock}]))
    vm = scene.admin.get(VM_RESOURCE, scene.vm_a, *ns)
    assert vm["spec"]["nodeName"] == scene.node_b
    assert MIGRATING_ANNOTATION not in (vm["metadata"].get("annotations") or {})
    # Now node B's: node A's pod may neither write it nor take it back.
    err = pod.refused(scene.policy, "patch", VM_RESOURCE, scene.vm_a, *ns,
                      *merge({"spec": {"nodeName": scene.node_a}}))
    assert scene.vm_message(scene.node_b) in err


def test_operator_pod_writes_only_the_migrations_its_node_is_the_source_or_the_target_of(scene: Scene) -> None:
    pod, admin, ns = scene.pod, scene.admin, scene.ns
    tag = uuid.uuid4().hex[:6]
    mine, to_me, theirs = f"from-a-{tag}", f"to-a-{tag}", f"b-to-c-{tag}"
    items = [migration_manifest(mine, scene.release.namespace, scene.vm_a, scene.node_b),
             migration_manifest(to_me, scene.release.namespace, scene.vm_b, scene.node_a),
             migration_manifest(theirs, scene.release.namespace, scene.vm_b, f"{scene.node_b}-c")]
    try:
        admin.ok("create", "-f", "-", input_text=json.dumps({"apiVersion": "v1", "kind": "List", "items": items}))
        pod.ok("patch", MIGRATION_RESOURCE, mine, *ns, "--subresource", "status",
               *merge({"status": {"phase": "Pending", "sourceNode": scene.node_a}}))
        pod.ok("patch", MIGRATION_RESOURCE, to_me, *ns, "--subresource", "status",
               *merge({"status": {"targetReady": True}}))
        admin.ok("patch", MIGRATION_RESOURCE, theirs, *ns, "--subresource", "status",
                 *merge({"status": {"sourceNode": scene.node_b}}))
        err = pod.refused(scene.policy, "patch", MIGRATION_RESOURCE, theirs, *ns, "--subresource", "status",
                          *merge({"status": {"phase": "Failed"}}))
        assert "may only write the migrations its node is the source or the target of" in err
        err = pod.refused(scene.policy, "patch", MIGRATION_RESOURCE, theirs, *ns, "--subresource", "status",
                          *merge({"status": {"sourceNode": scene.node_a}}))  # nor claim to be its source
        assert (admin.get(MIGRATION_RESOURCE, theirs, *ns)["status"] == {"sourceNode": scene.node_b})
    finally:
        admin.run("delete", MIGRATION_RESOURCE, mine, to_me, theirs, *ns, "--ignore-not-found")

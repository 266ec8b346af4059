"""The chart on the real control plane (hack/cluster.sh): `helm install` into a real kube-apiserver, the
CRD through its structural-schema checks, and the operator authenticated as the release's own
ServiceAccount, so the chart's RBAC is what the server enforces on every request it makes."""

from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import kubernetes
import pytest
import yaml

from libvirt_operator.api.constants import GROUP, PLURAL, VERSION
from testbed.control_plane import ControlPlane
from testbed.net import free_port
from tests.conftest import wait_for
from tests.helm.conftest import CHART, NAMESPACE, RELEASE, Helm
from tests.helm.test_chart import (
    CLUSTER_GRANTS,
    EXTRA_ENV,
    NAMESPACE_GRANTS,
    SETTINGS_ENV,
    first_vm_of,
    grants,
    operator_command,
)
from tests.helm.test_node_restriction import pod_on_node, token_kubeconfig, wait_until_enforced

NODE = "hv-1"


@pytest.fixture
def installed(helm: Helm, control_plane: ControlPlane, tmp_path: Path) -> Iterator[dict[str, str]]:
    """The chart installed with Helm (the operator on libvirt's in-memory driver), uninstalled afterwards."""
    values = {
        "operator": {"libvirtUri": "test:///default", "imageDir": str(tmp_path / "images"),
                     "storageDir": str(tmp_path / "disks"), "shutdownTimeout": 3, "stoppedEventDelay": 0.3},
        "health": {"port": free_port()}, "metrics": {"port": free_port()},
    }
    values_file = helm.values_file(values)
    kube = ["--kubeconfig", str(control_plane.admin_kubeconfig)]
    helm.run("install", RELEASE, str(CHART), "--namespace", NAMESPACE, "--create-namespace", "--values",
             str(values_file), *kube)
    try:
        yield {"values": str(values_file), "kubeconfig": str(control_plane.admin_kubeconfig)}
    finally:
        helm.run("uninstall", RELEASE, "--namespace", NAMESPACE, "--wait", *kube, check=False)


@pytest.fixture
def pod_token(helm: Helm, installed: dict[str, str], control_plane: ControlPlane, kubectl_bin: str) -> Iterator[str]:
    """What the kubelet gives the operator's pod on NODE: a release ServiceAccount token bound to a Pod on
    that node, whose node name the chart's node restriction policy (in force) checks every write against."""
    rendered = helm.template(yaml.safe_load(Path(installed["values"]).read_text()))
    service_account = rendered.one("ServiceAccount")["metadata"]["name"]
    if not control_plane.kubectl("get", "node", NODE, "--ignore-not-found", "-o", "name"):
        control_plane.kubectl("create", "-f", "-", input_text=json.dumps({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": NODE, "labels": {"virt.libvirt-operator.dev/hypervisor": "true"}}}))
    wait_until_enforced(kubectl_bin, control_plane, f"system:serviceaccount:{NAMESPACE}:{service_account}", NODE,
                        rendered.one("ValidatingAdmissionPolicy")["metadata"]["name"])
    with pod_on_node(control_plane, NAMESPACE, service_account, NODE, f"{RELEASE}-operator-{NODE}") as token:
        yield token


def test_helm_install_serves_the_crd_and_every_rbac_rule_names_a_served_resource_and_verb(
        helm: Helm, installed: dict[str, str], control_plane: ControlPlane) -> None:
    crd = json.loads(control_plane.kubectl("get", "crd", f"{PLURAL}.{GROUP}", "-o", "json"))
    conditions = {c["type"]: c["status"] for c in crd["status"]["conditions"]}
    assert conditions.get("Established") == "True" and conditions.get("NonStructuralSchema") is None, conditions
    served = _discovery(control_plane)
    for (group, resource), verbs in (CLUSTER_GRANTS | NAMESPACE_GRANTS).items():
        if resource.endswith("/finalizers"):  # an RBAC-only subresource: its parent must be served
            assert resource.split("/")[0] in served[group]
            continue
        assert resource in served[group], f"{group or 'core'}/{resource} is not served"
        assert verbs <= served[group][resource], f"{group or 'core'}/{resource}: {verbs - served[group][resource]}"
    releases = json.loads(helm.run("list", "-A", "-o", "json", "--kubeconfig", installed["kubeconfig"]).stdout)
    assert [(r["name"], r["namespace"], r["status"]) for r in releases] == [(RELEASE, NAMESPACE, "deployed")]


def _discovery(plane: ControlPlane) -> dict[str, dict[str, set[str]]]:
    """{group: {resource: verbs}} of the preferred versions, as an RBAC authorizer sees resources."""
    def get(path: str) -> dict[str, object]:
        return dict(json.loads(plane.kubectl("get", "--raw", path)))

    served: dict[str, dict[str, set[str]]] = {"": {}}
    for r in get("/api/v1")["resources"]:  # type: ignore[attr-defined]
        served[""][r["name"]] = set(r["verbs"])
    for group in get("/apis")["groups"]:  # type: ignore[attr-defined]
        found = served.setdefault(group["name"], {})
        for r in get(f"/apis/{group['preferredVersion']['groupVersion']}")["resources"]:  # type: ignore[attr-defined]
            found[r["name"]] = set(r["verbs"])
    return served


def test_operator_with_the_chart_args_env_and_service_account_runs_a_vm_and_the_server_refuses_nothing(
        helm: Helm, installed: dict[str, str], pod_token: str, control_plane: ControlPlane, kubectl_bin: str,
        tmp_path: Path) -> None:
    """The container's exact args and env, with the release ServiceAccount's pod-bound token standing in
    for in-cluster config: the pod becomes ready on its readiness probe, runs the NOTES' first VM, and the
    real API server (RBAC and the chart's node restriction policy enforced) answers none of its requests
    with 403."""
    rendered = helm.template(yaml.safe_load(Path(installed["values"]).read_text()))
    service_account = rendered.one("ServiceAccount")["metadata"]["name"]
    admin = kubernetes.client.ApiClient(_configuration(control_plane.admin_kubeconfig))
    custom = kubernetes.client.CustomObjectsApi(admin)
    user = f"system:serviceaccount:{NAMESPACE}:{service_account}"
    offset = control_plane.audit_offset()

    kubeconfig = token_kubeconfig(control_plane, tmp_path / "pod.kubeconfig", pod_token)
    env = {k: v for k, v in os.environ.items() if k not in SETTINGS_ENV | EXTRA_ENV}
    env.update(NODE_NAME=NODE, POD_NAMESPACE=NAMESPACE, KUBECONFIG=str(kubeconfig))
    env.update({name: var["value"] for name, var in rendered.env().items() if "value" in var})
    log = tmp_path / "operator.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([*operator_command(), "run", *rendered.container["args"]], env=env, stdout=out,
                                stderr=subprocess.STDOUT)
    try:
        ready = rendered.container["readinessProbe"]["httpGet"]
        ready_url = f"http://127.0.0.1:{rendered.container_port(ready['port'])}{ready['path']}"
        wait_for(lambda: _alive(proc, log) and _status(ready_url) == 200, timeout=60, what="the readiness probe")
        live = rendered.container["livenessProbe"]["httpGet"]
        assert _status(f"http://127.0.0.1:{rendered.container_port(live['port'])}{live['path']}") == 200
        assert _status(f"http://127.0.0.1:{rendered.container_port('metrics')}/metrics") == 200

        notes = helm.run("status", RELEASE, "--namespace", NAMESPACE,
                         "--kubeconfig", installed["kubeconfig"]).stdout
        vm = first_vm_of(notes, NODE)
        subprocess.run([kubectl_bin, "--kubeconfig", installed["kubeconfig"], "apply", "-f", "-"],
                       input=yaml.safe_dump(vm), text=True, check=True, capture_output=True, timeout=30)
        name, namespace = vm["metadata"]["name"], vm["metadata"]["namespace"]

        def phase() -> str | None:
            obj = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
            return (obj.get("status") or {}).get("phase")
        wait_for(lambda: _alive(proc, log) and phase() == "Running", timeout=60, what="the first VM to run")
        custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)

        def gone() -> bool:
            items = custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)["items"]
            return not [i for i in items if i["metadata"]["name"] == name]
        wait_for(lambda: _alive(proc, log) and gone(), timeout=60, what="the first VM to be deleted")
    finally:
        proc.send_signal(signal.SIGTERM)
        code: int | None
        try:
            code = proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            code = None
        leases = kubernetes.client.CoordinationV1Api(admin).list_lease_for_all_namespaces().items
        admin.close()
    assert code == 0, log.read_text()[-3000:]

    requests = control_plane.requests_since(offset, user)
    refused = control_plane.refused_since(offset, user)
    assert not refused, f"requests the chart's RBAC refused on the real server: {refused}"
    allowed = grants(rendered.one("ClusterRole")) | grants(rendered.one("Role"))
    outside = sorted((verb, resource) for verb, resource in requests
                     if not any(res == resource and verb in verbs for (_g, res), verbs in allowed.items()))
    assert not outside, f"requests outside the chart's rules: {outside}"
    assert requests[("create", "leases")] >= 1 or requests[("update", "leases")] >= 1  # the Role is really used
    ours = {lease.metadata.namespace for lease in leases if lease.metadata.name.endswith(NODE)}
    assert ours == {NAMESPACE}, ours  # ... and only in the release namespace
    assert collections.Counter(r for r in requests if r[1] == f"{PLURAL}/status")  # status went through etcd


@pytest.mark.parametrize(("verb", "resource", "namespaced"), [
    ("get", "secrets", True), ("list", "secrets", False), ("watch", "secrets", False),
    ("create", "pods", True), ("delete", "pods", True), ("patch", "pods", True), ("get", "pods/exec", True),
    ("delete", "nodes", False), ("create", "nodes", False), ("update", "nodes", False),
    ("create", f"{PLURAL}.{GROUP}", True), ("delete", f"{PLURAL}.{GROUP}", True),
    ("create", "configmaps", True), ("create", "deployments.apps", True), ("create", "daemonsets.apps", True),
    ("create", "clusterrolebindings.rbac.authorization.k8s.io", False), ("escalate", "clusterroles", False),
    ("create", "serviceaccounts/token", True), ("delete", "leases.coordination.k8s.io", True),
    ("create", "customresourcedefinitions.apiextensions.k8s.io", False),
])
def test_the_operators_service_account_is_refused_what_it_must_never_do(
        control_plane: ControlPlane, verb: str, resource: str, namespaced: bool) -> None:
    namespace = control_plane.namespace if namespaced else None
    assert not control_plane.can_i(verb, resource, namespace=namespace), \
        f"{control_plane.user} may {verb} {resource}"


def test_the_operators_service_account_may_do_what_it_needs(control_plane: ControlPlane) -> None:
    for verb, resource, namespace in [("watch", f"{PLURAL}.{GROUP}", None), ("patch", f"{PLURAL}.{GROUP}/status", None),
                                      ("patch", "nodes", None), ("create", "events", "default"),
                                      ("update", "leases.coordination.k8s.io", control_plane.namespace)]:
        assert control_plane.can_i(verb, resource, namespace=namespace), f"{verb} {resource}"


def _configuration(kubeconfig: Path) -> kubernetes.client.Configuration:
    configuration = kubernetes.client.Configuration()
    kubernetes.config.load_kube_config(config_file=str(kubeconfig), client_configuration=configuration)
    return configuration


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def _alive(proc: subprocess.Popen[bytes], log: Path) -> bool:
    if proc.poll() is not None:
        raise AssertionError(f"the operator exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
    return True

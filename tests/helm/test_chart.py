"""The Helm chart, rendered by the real helm binary: objects, least privilege, flags the operator accepts.

What the chart does on a real API server (helm install, RBAC enforced) is in test_chart_on_real_api.py.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from libvirt_operator import settings as settings_mod
from libvirt_operator.api.constants import CRD_NAME, GROUP, MIGRATION_CRD_NAME, MIGRATION_PLURAL, PLURAL, VERSION
from libvirt_operator.kube.lease import LeaseConfig
from tests.conftest import REPO
from tests.helm.conftest import CHART, NAMESPACE, RELEASE, Helm, Manifest, Rendered

DEPLOY_CRDS = REPO / "deploy" / "crds"
CHART_CRDS = CHART / "crds"
FULLNAME = f"{RELEASE}-libvirt-operator"
SOCKET_DIR = "/run/libvirt"

# Environment variables the operator reads besides its settings': the Lease's namespace (kube/lease.py).
EXTRA_ENV = {"POD_NAMESPACE"}


def _settings_env() -> frozenset[str]:
    """The environment variable of every setting that has a flag (env_name_for raises for the others)."""
    names = set()
    for field in dataclasses.fields(settings_mod.Settings):
        try:
            names.add(settings_mod.env_name_for(field.name))
        except KeyError:
            continue
    return frozenset(names)


SETTINGS_ENV = _settings_env()

# Everything the operator may do, and nothing more (least privilege): (apiGroup, resource) -> verbs.
CLUSTER_GRANTS = {
    (GROUP, PLURAL): {"get", "list", "watch", "patch", "update"},
    (GROUP, f"{PLURAL}/status"): {"get", "patch", "update"},
    (GROUP, f"{PLURAL}/finalizers"): {"update"},
    ("", "events"): {"create", "patch"},
    ("events.k8s.io", "events"): {"create", "patch"},
    ("", "nodes"): {"get", "list", "watch", "patch"},
    ("", "nodes/status"): {"get", "patch"},
    ("apiextensions.k8s.io", "customresourcedefinitions"): {"get", "list", "watch"},
    ("", "namespaces"): {"list", "watch"},
    (GROUP, MIGRATION_PLURAL): {"get", "list", "watch"},
    (GROUP, f"{MIGRATION_PLURAL}/status"): {"get", "patch"},
}
NAMESPACE_GRANTS = {("coordination.k8s.io", "leases"): {"get", "list", "watch", "create", "update", "patch"}}
NODE_RESTRICTION_KINDS = ("ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding")  # cluster-scoped

CUSTOM: dict[str, Any] = {
    "image": {"repository": "registry.example.com/virt/libvirt-operator", "tag": "1.2.3", "pullPolicy": "Always"},
    "imagePullSecrets": [{"name": "regcred"}],
    "operator": {
        "libvirtUri": "qemu+unix:///system?socket=/run/libvirt/libvirt-sock",
        "imageDir": "/srv/vm/images",
        "storageDir": "/srv/vm/disks",
        "domainType": "kvm",
        "syncInterval": 2.5,
        "shutdownTimeout": 120.5,
        "stoppedEventDelay": 0.5,
        "sharedStorage": "true",
        "migrationUri": "qemu+tls://$(NODE_NAME).example/system",
        "resumeGuestsOnHostBoot": False,
        "deleteOrphanDisks": True,
        "workers": 4,
        "logLevel": "DEBUG",
        "maxVcpus": 8,
        "maxMemoryMiB": 1048576,
    },
    "extraArgs": ["--lease-duration=20", "--max-disks=4"],
    "extraEnv": [{"name": "LIBVIRT_OPERATOR_MAX_INTERFACES", "value": "3"}],
    "health": {"port": 18080},
    "metrics": {"port": 19090, "serviceMonitor": {"enabled": True, "labels": {"release": "prom"}}},
    "hostPaths": {"libvirtSocketDir": "/var/run/libvirt", "createDirectories": False, "imagesReadOnly": False},
    "nodeSelector": {"kubernetes.io/os": "linux"},
    "tolerations": [{"key": "hypervisor", "operator": "Exists", "effect": "NoSchedule"}],
    "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": "kubernetes.io/arch", "operator": "In", "values": ["amd64"]}]}]}}},
    "priorityClassName": "system-node-critical",
    "updateStrategy": {"maxUnavailable": "25%"},
    "podAnnotations": {"example.com/scrape": "yes"},
    "podLabels": {"team": "virt"},
    "commonLabels": {"owner": "platform"},
    "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"memory": "1Gi"}},
}


@pytest.fixture(scope="module")
def custom_render(helm: Helm) -> Rendered:
    return helm.template(CUSTOM)


@pytest.fixture(params=["default", "custom"])
def rendered(request: pytest.FixtureRequest, default_render: Rendered, custom_render: Rendered) -> Rendered:
    """The chart rendered with its default values, then with CUSTOM."""
    return default_render if request.param == "default" else custom_render


def settings_from(rendered: Rendered, monkeypatch: pytest.MonkeyPatch, node: str = "node-a") -> settings_mod.Settings:
    """The Settings the operator builds from the container's args and env (the downward API filled in)."""
    for name in SETTINGS_ENV | EXTRA_ENV:
        monkeypatch.delenv(name, raising=False)
    for name, var in rendered.env().items():
        if name == "NODE_NAME":
            assert var["valueFrom"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
            monkeypatch.setenv(name, node)
        elif "value" in var:
            monkeypatch.setenv(name, var["value"])
    parser = argparse.ArgumentParser()
    settings_mod.add_arguments(parser)
    # The kubelet expands $(VAR) in args from the container's environment.
    args = [re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: os.environ.get(m[1], m[0]), arg)
            for arg in rendered.container["args"]]
    return settings_mod.from_namespace(parser.parse_args(args))


def operator_command() -> list[str]:
    """The console script the image's ENTRYPOINT names, when installed next to this Python."""
    script = Path(sys.executable).parent / "libvirt-operator"
    return [str(script)] if script.exists() else [sys.executable, "-m", "libvirt_operator"]


def rules(role: Manifest) -> Iterator[tuple[str, str, str]]:
    for rule in role["rules"]:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                for verb in rule["verbs"]:
                    yield group, resource, verb


def grants(role: Manifest) -> dict[tuple[str, str], set[str]]:
    found: dict[tuple[str, str], set[str]] = {}
    for group, resource, verb in rules(role):
        found.setdefault((group, resource), set()).add(verb)
    return found


# --- lint and the objects rendered ------------------------------------------------------------------


def test_helm_lint_passes_strict_with_default_and_custom_values(helm: Helm) -> None:
    helm.run("lint", str(CHART))
    out = helm.run("lint", "--strict", str(CHART), "--values", str(helm.values_file(CUSTOM))).stdout
    assert "1 chart(s) linted, 0 chart(s) failed" in out


def test_default_render_holds_the_operator_objects_and_no_service_monitor(default_render: Rendered) -> None:
    assert default_render.kinds() == ["ClusterRole", "ClusterRoleBinding", "DaemonSet", "Role", "RoleBinding",
                                      "Service", "ServiceAccount", *NODE_RESTRICTION_KINDS]
    for doc in default_render.docs:
        if doc["kind"] not in ("ClusterRole", "ClusterRoleBinding", *NODE_RESTRICTION_KINDS):
            assert doc["metadata"]["namespace"] == NAMESPACE, doc["kind"]


def test_crd_is_installed_from_the_crds_directory(helm: Helm) -> None:
    crds = helm.template(None, "--include-crds").all("CustomResourceDefinition")
    assert sorted(crd["metadata"]["name"] for crd in crds) == sorted([CRD_NAME, MIGRATION_CRD_NAME])


def test_service_monitor_scrapes_the_metrics_service_port(custom_render: Rendered) -> None:
    monitor = custom_render.one("ServiceMonitor")
    service = custom_render.one("Service")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "prom"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert [e["port"] for e in monitor["spec"]["endpoints"]] == [p["name"] for p in service["spec"]["ports"]]


def test_metrics_service_is_headless_and_targets_the_metrics_container_port(custom_render: Rendered) -> None:
    service = custom_render.one("Service")
    assert service["spec"]["clusterIP"] == "None"
    pod_labels = custom_render.one("DaemonSet")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    (port,) = service["spec"]["ports"]
    assert port["port"] == custom_render.container_port(port["targetPort"]) == 19090
    assert custom_render.args()["--metrics-port"] == "19090"


def test_metrics_disabled_passes_port_zero_and_renders_no_service(helm: Helm) -> None:
    rendered = helm.template({"metrics": {"enabled": False, "serviceMonitor": {"enabled": True}}})
    assert "Service" not in rendered.kinds() and "ServiceMonitor" not in rendered.kinds()
    assert rendered.args()["--metrics-port"] == "0"
    assert [p["name"] for p in rendered.container["ports"]] == ["health"]


# --- RBAC ----------------------------------------------------------------------------------------------


def test_rbac_grants_exactly_what_the_operator_needs_without_wildcards(rendered: Rendered) -> None:
    roles = rendered.all("ClusterRole") + rendered.all("Role")
    for role in roles:
        for rule in role["rules"]:
            assert set(rule) <= {"apiGroups", "resources", "verbs"}, rule  # no resourceNames/nonResourceURLs
            for key in ("apiGroups", "resources", "verbs"):
                assert not any("*" in item for item in rule[key]), f"wildcard in {role['kind']}: {rule}"
    assert grants(rendered.one("ClusterRole")) == CLUSTER_GRANTS
    role = rendered.one("Role")
    assert role["metadata"]["namespace"] == NAMESPACE
    assert grants(role) == NAMESPACE_GRANTS


def test_bindings_give_the_roles_to_the_daemonset_service_account(default_render: Rendered) -> None:
    account = default_render.one("ServiceAccount")["metadata"]
    assert default_render.pod["serviceAccountName"] == account["name"]
    for binding_kind, role_kind in (("ClusterRoleBinding", "ClusterRole"), ("RoleBinding", "Role")):
        binding = default_render.one(binding_kind)
        assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": role_kind,
                                      "name": default_render.one(role_kind)["metadata"]["name"]}
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account["name"],
                                        "namespace": account["namespace"]}]


def test_existing_service_account_is_used_when_not_created(helm: Helm) -> None:
    rendered = helm.template({"serviceAccount": {"create": False, "name": "vm-admin"}})
    assert "ServiceAccount" not in rendered.kinds()
    assert rendered.pod["serviceAccountName"] == "vm-admin"
    assert rendered.one("ClusterRoleBinding")["subjects"][0]["name"] == "vm-admin"
    assert "serviceAccount.name is required" in helm.template_error({"serviceAccount": {"create": False}})


def test_secrets_are_readable_only_in_the_listed_namespaces_and_only_with_get(helm: Helm) -> None:
    # The default: no Secret access at all (inline spec.cloudInit.userData needs none).
    assert not any(r == "secrets" for role in helm.template().all("ClusterRole") + helm.template().all("Role")
                   for _g, r, _v in rules(role))
    rendered = helm.template({"cloudInit": {"secretNamespaces": ["team-a", "team-b"], "secretNames": ["seed"]}})
    secret_roles = [r for r in rendered.all("Role") if r["metadata"]["name"].endswith("-cloud-init-secrets")]
    assert sorted(r["metadata"]["namespace"] for r in secret_roles) == ["team-a", "team-b"]
    for role in secret_roles:
        assert role["rules"] == [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"],
                                  "resourceNames": ["seed"]}]
    account = rendered.one("ServiceAccount")["metadata"]
    bindings = [b for b in rendered.all("RoleBinding") if b["metadata"]["name"].endswith("-cloud-init-secrets")]
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["team-a", "team-b"]
    for binding in bindings:
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account["name"],
                                        "namespace": account["namespace"]}]
    # Any Secret of those namespaces when no names are given; never list or watch.
    rendered = helm.template({"cloudInit": {"secretNamespaces": ["team-a"]}})
    role = next(r for r in rendered.all("Role") if r["metadata"]["name"].endswith("-cloud-init-secrets"))
    assert role["rules"] == [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}]


def test_rbac_can_be_left_to_the_cluster_admin(helm: Helm) -> None:
    kinds = helm.template({"rbac": {"create": False}}).kinds()
    assert not {"ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"} & set(kinds)


# --- the pod ----------------------------------------------------------------------------------------------


def test_node_name_and_pod_namespace_come_from_the_downward_api(default_render: Rendered) -> None:
    env = default_render.env()
    assert env["NODE_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
    assert env["POD_NAMESPACE"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}


def test_libvirt_socket_and_storage_directories_are_mounted_from_the_host_at_the_same_paths(rendered: Rendered) -> None:
    volumes = {v["name"]: v for v in rendered.pod["volumes"]}
    mounts = {m["mountPath"]: m for m in rendered.container["volumeMounts"]}
    socket = volumes[mounts[SOCKET_DIR]["name"]]["hostPath"]
    assert socket == {"path": rendered.values["hostPaths"]["libvirtSocketDir"], "type": "Directory"}
    args = rendered.args()
    for flag in ("--image-dir", "--storage-dir"):
        path = args[flag]
        assert path is not None and path in mounts, f"{flag}={path} is not mounted"
        assert volumes[mounts[path]["name"]]["hostPath"]["path"] == path  # same path inside as on the host
    images, disks = mounts[str(args["--image-dir"])], mounts[str(args["--storage-dir"])]
    assert images.get("readOnly", False) is rendered.values["hostPaths"]["imagesReadOnly"]
    assert not disks.get("readOnly", False)
    dir_type = "DirectoryOrCreate" if rendered.values["hostPaths"]["createDirectories"] else "Directory"
    assert volumes[images["name"]]["hostPath"]["type"] == volumes[disks["name"]]["hostPath"]["type"] == dir_type
    assert volumes[mounts["/tmp"]["name"]] == {"name": mounts["/tmp"]["name"], "emptyDir": {"sizeLimit": "64Mi"}}
    assert {m["mountPath"] for m in rendered.container["volumeMounts"]} == {SOCKET_DIR, "/tmp", str(
        args["--image-dir"]), str(args["--storage-dir"])}


def test_probes_and_ports_are_the_ones_the_operator_listens_on(rendered: Rendered) -> None:
    args = rendered.args()
    health, metrics = rendered.values["health"]["port"], rendered.values["metrics"]["port"]
    assert args["--health-port"] == str(health) and args["--metrics-port"] == str(metrics)
    live, ready = rendered.container["livenessProbe"], rendered.container["readinessProbe"]
    assert live["httpGet"]["path"] == "/healthz" and ready["httpGet"]["path"] == "/readyz"
    assert rendered.container_port(live["httpGet"]["port"]) == rendered.container_port(ready["httpGet"]["port"]) \
        == health
    assert rendered.container_port("metrics") == metrics
    assert rendered.pod["hostNetwork"] is False


def test_every_flag_is_one_the_operator_declares(rendered: Rendered) -> None:
    unknown = set(rendered.args()) - settings_mod.RUN_FLAGS
    assert not unknown, f"flags `libvirt-operator run` does not declare: {unknown}"
    assert "command" not in rendered.container  # the image's entrypoint: `libvirt-operator run`


def test_every_flag_is_in_the_cli_help(default_render: Rendered, custom_render: Rendered) -> None:
    if not (REPO / "operator" / "libvirt_operator" / "cli.py").exists():
        pytest.skip("operator/libvirt_operator/cli.py is not written yet: `libvirt-operator run --help` cannot run")
    done = subprocess.run([*operator_command(), "run", "--help"], capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, COLUMNS="200"))
    assert done.returncode == 0, done.stderr
    declared = set(re.findall(r"--[a-z][a-z0-9-]*", done.stdout))
    for rendered in (default_render, custom_render):
        assert set(rendered.args()) <= declared, set(rendered.args()) - declared


def test_every_env_var_is_one_the_operator_reads(rendered: Rendered, monkeypatch: pytest.MonkeyPatch) -> None:
    unknown = set(rendered.env()) - SETTINGS_ENV - EXTRA_ENV
    assert not unknown, f"env vars the operator does not read: {unknown}"
    # POD_NAMESPACE really places the node Lease (for which the chart's Role is namespaced).
    monkeypatch.setenv("POD_NAMESPACE", NAMESPACE)
    assert LeaseConfig.for_node("node-a").namespace == NAMESPACE


def test_default_values_give_the_operator_defaults_and_the_node_from_the_downward_api(
        default_render: Rendered, monkeypatch: pytest.MonkeyPatch) -> None:
    got = settings_from(default_render, monkeypatch, node="hv-1")
    defaults = settings_mod.Settings()
    assert got == dataclasses.replace(defaults, node_name="hv-1")


def test_custom_values_reach_the_operator_settings(custom_render: Rendered, monkeypatch: pytest.MonkeyPatch) -> None:
    got = settings_from(custom_render, monkeypatch)
    expected = dataclasses.replace(
        settings_mod.Settings(), node_name="node-a", libvirt_uri=CUSTOM["operator"]["libvirtUri"],
        image_dir=Path("/srv/vm/images"), storage_dir=Path("/srv/vm/disks"), domain_type="kvm",
        sync_interval=2.5, shutdown_timeout=120.5, stopped_event_delay=0.5, shared_storage="true",
        migration_uri="qemu+tls://node-a.example/system",
        resume_guests_on_host_boot=False, delete_orphan_disks=True, workers=4, log_level="DEBUG", max_vcpus=8,
        max_memory_mib=1048576, health_port=18080, metrics_port=19090,
        lease_duration=20.0, max_disks=4,  # extraArgs
        max_interfaces=3,  # extraEnv
    )
    assert got == expected


def test_container_runs_without_privilege_or_capabilities(default_render: Rendered) -> None:
    context = default_render.container["securityContext"]
    assert context["privileged"] is False and context["allowPrivilegeEscalation"] is False
    assert context["readOnlyRootFilesystem"] is True
    assert context["capabilities"] == {"drop": ["ALL"]}
    assert default_render.pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    host_paths = [v["hostPath"]["path"] for v in default_render.pod["volumes"] if "hostPath" in v]
    assert "/dev/kvm" not in host_paths and "/dev" not in host_paths  # QEMU runs under the host's libvirtd
    assert not any(default_render.pod.get(k) for k in ("hostPID", "hostIPC", "hostNetwork"))


def test_non_root_user_and_libvirt_group_are_values(helm: Helm) -> None:
    rendered = helm.template({"podSecurityContext": {"runAsUser": 65532, "runAsGroup": 65532, "runAsNonRoot": True,
                                                     "supplementalGroups": [111]}})
    context = rendered.pod["securityContext"]
    assert (context["runAsUser"], context["runAsNonRoot"], context["supplementalGroups"]) == (65532, True, [111])
    assert context["seccompProfile"] == {"type": "RuntimeDefault"}  # merged with the defaults


def test_image_tag_defaults_to_the_app_version(default_render: Rendered, custom_render: Rendered) -> None:
    app_version = yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]
    assert default_render.container["image"] == f"libvirt-operator:{app_version}"
    assert default_render.container["imagePullPolicy"] == "IfNotPresent"
    assert custom_render.container["image"] == "registry.example.com/virt/libvirt-operator:1.2.3"
    assert custom_render.container["imagePullPolicy"] == "Always"
    assert custom_render.pod["imagePullSecrets"] == [{"name": "regcred"}]


def test_termination_grace_covers_in_flight_work_after_sigterm(
        helm: Helm, default_render: Rendered, custom_render: Rendered) -> None:
    assert default_render.pod["terminationGracePeriodSeconds"] == 90  # shutdownTimeout 60 + 30
    assert custom_render.pod["terminationGracePeriodSeconds"] == 151  # ceil(120.5) + 30
    short = helm.template({"operator": {"shutdownTimeout": 5}})
    assert short.pod["terminationGracePeriodSeconds"] == 60  # the 30 s wait for in-flight work + 30
    assert helm.template({"terminationGracePeriodSeconds": 300}).pod["terminationGracePeriodSeconds"] == 300


def test_scheduling_update_and_pod_metadata_values(default_render: Rendered, custom_render: Rendered) -> None:
    assert default_render.pod["nodeSelector"] == {"virt.libvirt-operator.dev/hypervisor": "true"}
    assert "priorityClassName" not in default_render.pod and "tolerations" not in default_render.pod
    strategy = default_render.one("DaemonSet")["spec"]["updateStrategy"]
    assert strategy == {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}}

    pod = custom_render.pod
    # Helm merges maps with the defaults: the hypervisor label stays unless set to null.
    assert pod["nodeSelector"] == {"virt.libvirt-operator.dev/hypervisor": "true", "kubernetes.io/os": "linux"}
    assert pod["tolerations"] == CUSTOM["tolerations"] and pod["affinity"] == CUSTOM["affinity"]
    assert pod["priorityClassName"] == "system-node-critical"
    assert custom_render.one("DaemonSet")["spec"]["updateStrategy"]["rollingUpdate"]["maxUnavailable"] == "25%"
    template = custom_render.one("DaemonSet")["spec"]["template"]["metadata"]
    assert template["annotations"] == {"example.com/scrape": "yes"}
    assert template["labels"]["team"] == "virt"
    assert all(doc["metadata"]["labels"]["owner"] == "platform" for doc in custom_render.docs)
    selector = custom_render.one("DaemonSet")["spec"]["selector"]["matchLabels"]
    assert selector == {"app.kubernetes.io/name": "libvirt-operator", "app.kubernetes.io/instance": RELEASE}
    assert custom_render.container["resources"] == CUSTOM["resources"]


def test_default_node_selector_label_is_dropped_by_setting_it_to_null(helm: Helm) -> None:
    rendered = helm.template({"nodeSelector": {"virt.libvirt-operator.dev/hypervisor": None, "role": "hv"}})
    assert rendered.pod["nodeSelector"] == {"role": "hv"}


def test_notes_tell_how_to_check_the_install_and_create_a_vm(helm: Helm) -> None:
    out = helm.run("install", RELEASE, str(CHART), "--namespace", NAMESPACE, "--dry-run=client").stdout
    notes = out[out.index("NOTES:"):]
    assert f"kubectl -n {NAMESPACE} rollout status daemonset/{FULLNAME}" in notes
    assert f"kubectl get crd {CRD_NAME}" in notes
    vm = first_vm_of(notes, "hv-1")
    assert (vm["apiVersion"], vm["kind"], vm["spec"]["nodeName"]) == (f"{GROUP}/{VERSION}", "VirtualMachine", "hv-1")


def first_vm_of(notes: str, node: str) -> Manifest:
    """The VirtualMachine of the NOTES' `kubectl apply -f - <<'YAML'` example, for node ``node``."""
    match = re.search(r"^kubectl apply -f - <<'YAML'\n(.*?)^YAML$", notes, re.M | re.S)
    assert match, notes
    document: Manifest = yaml.safe_load(match.group(1).replace("NODE", node))
    return document


# --- values the chart refuses ---------------------------------------------------------------------------


@pytest.mark.parametrize(("values", "complaint"), [
    ({"operator": {"workers": "many"}}, "at '/operator/workers': got string, want integer"),
    ({"operator": {"resumeGuestsOnHostBoot": "yes"}}, "at '/operator/resumeGuestsOnHostBoot': got string"),
    ({"terminationGracePeriodSeconds": "90"}, "at '/terminationGracePeriodSeconds'"),
    ({"bogus": 1}, "additional properties 'bogus' not allowed"),
    ({"operator": {"sharedStorge": "true"}}, "at '/operator': additional properties 'sharedStorge' not allowed"),
    ({"metrics": {"serviceMonitor": {"enable": True}}}, "at '/metrics/serviceMonitor': additional properties"),
    ({"updateStrategy": {"maxSurge": 1}}, "at '/updateStrategy': additional properties 'maxSurge' not allowed"),
    ({"operator": {"sharedStorage": "maybe"}}, "at '/operator/sharedStorage': value must be one of"),
    ({"operator": {"domainType": "xen"}}, "at '/operator/domainType': value must be one of"),
    ({"operator": {"logLevel": "TRACE"}}, "at '/operator/logLevel': value must be one of"),
    ({"hostPaths": {"mountPropagation": "Bidirectional"}}, "at '/hostPaths/mountPropagation'"),
    ({"image": {"pullPolicy": "Sometimes"}}, "at '/image/pullPolicy': value must be one of"),
    ({"operator": {"storageDir": "disks"}}, "at '/operator/storageDir'"),
    ({"health": {"port": 70000}}, "at '/health/port'"),
    ({"extraArgs": ["lease-duration=3"]}, "at '/extraArgs/0'"),
    ({"extraEnv": [{"value": "1"}]}, "at '/extraEnv/0'"),
])
def test_schema_rejects_wrong_types_unknown_keys_and_bad_enums(
        helm: Helm, values: dict[str, Any], complaint: str) -> None:
    error = helm.template_error(values)
    assert "values don't meet the specifications of the schema" in error
    assert complaint in error, error


@pytest.mark.parametrize(("values", "complaint"), [
    ({"metrics": {"port": 8080}}, "metrics.port must differ from health.port"),
    ({"operator": {"storageDir": "/var/lib/libvirt-operator/images/"}},
     "operator.imageDir and operator.storageDir must be different directories"),
    ({"metrics": {"service": {"enabled": False}, "serviceMonitor": {"enabled": True}}},
     "metrics.serviceMonitor.enabled needs metrics.service.enabled"),
])
def test_conflicting_values_are_refused_with_the_reason(helm: Helm, values: dict[str, Any], complaint: str) -> None:
    assert complaint in helm.template_error(values)


# --- the CRD ---------------------------------------------------------------------------------------------


def test_chart_crds_are_byte_identical_to_deploy_crds() -> None:
    source = sorted(p.name for p in DEPLOY_CRDS.glob("*.yaml"))
    assert source, "deploy/crds/ holds no CRD"
    assert sorted(p.name for p in CHART_CRDS.iterdir()) == source, "run hack/sync-chart-crd.sh"
    for name in source:
        assert (CHART_CRDS / name).read_bytes() == (DEPLOY_CRDS / name).read_bytes(), \
            f"{CHART_CRDS / name} differs from deploy/crds/ (run hack/sync-chart-crd.sh)"


# --- the image ------------------------------------------------------------------------------------------


def test_dockerfile_matches_what_the_chart_expects(default_render: Rendered) -> None:
    dockerfile = (REPO / "Dockerfile").read_text()
    entrypoint = re.search(r"^ENTRYPOINT (\[.*\])$", dockerfile, re.M)
    assert entrypoint and json.loads(entrypoint.group(1)) == ["libvirt-operator", "run"]
    scripts = _pyproject()["project"]["scripts"]
    assert scripts["libvirt-operator"] == "libvirt_operator.cli:main"
    exposed = re.search(r"^EXPOSE (.*)$", dockerfile, re.M)
    assert exposed and sorted(int(p) for p in exposed.group(1).split()) == sorted(
        int(p["containerPort"]) for p in default_render.container["ports"])
    # The base is a Debian bookworm Python image by default; BASE_IMAGE swaps it (hack/image.sh passes a
    # bookworm it bootstraps itself), for both stages at once.
    assert re.search(r"^ARG BASE_IMAGE=python:3\.11-slim-bookworm$", dockerfile, re.M)
    froms = re.findall(r"^FROM (\S+)", dockerfile, re.M)
    assert len(froms) >= 2 and set(froms) == {"${BASE_IMAGE}"}, froms
    assert re.search(r"install .*\blibvirt0\b.*\bqemu-utils\b", dockerfile)
    # Every path the build copies is in the build context (.dockerignore lets it through).
    allowed = [line[1:].rstrip("/") for line in (REPO / ".dockerignore").read_text().splitlines()
               if line.startswith("!")]
    for source in re.findall(r"^COPY (?!--from)(.+) \S+$", dockerfile, re.M):
        for path in source.split():
            assert (REPO / path).exists(), path
            assert any(path.rstrip("/") == a or path.startswith(a + "/") for a in allowed), path


def _pyproject() -> dict[str, Any]:
    import tomllib

    with open(REPO / "pyproject.toml", "rb") as handle:
        return tomllib.load(handle)


# --- node restriction (templates/node-restriction.yaml; enforced on a real API server: test_node_restriction.py)


def test_node_restriction_policy_confines_the_release_service_account_writes_to_its_node(
        default_render: Rendered) -> None:
    policy, binding = default_render.one("ValidatingAdmissionPolicy"), default_render.one(NODE_RESTRICTION_KINDS[1])
    assert binding["spec"] == {"policyName": policy["metadata"]["name"], "validationActions": ["Deny"]}
    spec = policy["spec"]
    assert spec["failurePolicy"] == "Fail"
    [condition] = spec["matchConditions"]
    assert condition["expression"] == f"request.userInfo.username == 'system:serviceaccount:{NAMESPACE}:{FULLNAME}'"
    matched = {(group, resource): set(rule["operations"]) for rule in spec["matchConstraints"]["resourceRules"]
               for group in rule["apiGroups"] for resource in rule["resources"]}
    writes = {key for key, verbs in CLUSTER_GRANTS.items() if verbs & {"create", "update", "patch", "delete"}
              and key[1] != "events" and not key[1].endswith("/finalizers")}  # finalizers: RBAC-only, an UPDATE
    assert writes == {(GROUP, PLURAL), (GROUP, f"{PLURAL}/status"), ("", "nodes"), ("", "nodes/status"),
                      (GROUP, f"{MIGRATION_PLURAL}/status")}
    assert all("UPDATE" in matched.get(key, set()) for key in writes), matched
    assert not [key for key in matched if key[1] == "events"]
    assert "authentication.kubernetes.io/node-name" in json.dumps(spec["variables"])


def test_node_restriction_follows_the_service_account_and_can_be_turned_off(helm: Helm) -> None:
    policy = helm.template({"serviceAccount": {"create": False, "name": "vm-admin"}}).one("ValidatingAdmissionPolicy")
    assert f"'system:serviceaccount:{NAMESPACE}:vm-admin'" in policy["spec"]["matchConditions"][0]["expression"]
    assert not set(NODE_RESTRICTION_KINDS) & set(helm.template({"nodeRestriction": {"enabled": False}}).kinds())


def test_node_restriction_is_refused_before_kubernetes_1_30_with_the_way_out(helm: Helm) -> None:
    assert "set nodeRestriction.enabled=false" in helm.template_error(None, "--kube-version", "1.29.9")
    old = helm.template({"nodeRestriction": {"enabled": False}}, "--kube-version", "1.29.9")
    assert "DaemonSet" in old.kinds() and not set(NODE_RESTRICTION_KINDS) & set(old.kinds())
    assert set(NODE_RESTRICTION_KINDS) <= set(helm.template(None, "--kube-version", "1.30.0").kinds())


def test_host_network_is_off_by_default_and_a_value_for_nodes_without_a_pod_network(
        default_render: Rendered, helm: Helm) -> None:
    assert default_render.pod["hostNetwork"] is False and "dnsPolicy" not in default_render.pod
    on = helm.template({"hostNetwork": True})
    assert on.pod["hostNetwork"] is True
    assert on.pod["dnsPolicy"] == "ClusterFirstWithHostNet"  # cluster DNS still first, as without it

"""The chart's life cycle with the real helm binary against local mode's API (`libvirt-operator dev
--api-only`): install (also --dry-run=server), list, upgrade, uninstall.

Nothing runs the DaemonSet's pods there (no kubelet, no controllers): what is checked is what Helm
itself does with the API, its release Secrets and the objects of the chart.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from libvirt_operator.api.constants import CRD_NAME
from tests.conftest import wait_for
from tests.helm.conftest import CHART, NAMESPACE, RELEASE, Helm

FULLNAME = f"{RELEASE}-libvirt-operator"
# The emulator serves no admissionregistration.k8s.io: the chart refuses its node restriction policy there.
NO_POLICY = ("--set", "nodeRestriction.enabled=false")


class LocalApi:
    """`libvirt-operator dev --api-only` in a subprocess, and helm pointed at it."""

    def __init__(self, workdir: Path, helm: Helm) -> None:
        self.kubeconfig = workdir / "kubeconfig"
        self.helm_bin = helm
        self.log = workdir / "api.log"
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "libvirt_operator", "dev", "--api-only",
                                          "--kubeconfig", str(self.kubeconfig)], stdout=out, stderr=subprocess.STDOUT)
        wait_for(self.kubeconfig.exists, timeout=30, what="local mode's kubeconfig")

    def helm(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.helm_bin.run(*args, "--kubeconfig", str(self.kubeconfig), check=check)

    def releases(self) -> list[dict[str, Any]]:
        listed: list[dict[str, Any]] = json.loads(self.helm("list", "-A", "-o", "json").stdout)
        return listed

    def get(self, path: str) -> dict[str, Any] | None:
        """What the API holds at `path` (None: 404), read by plain HTTP rather than through helm."""
        server = yaml.safe_load(self.kubeconfig.read_text())["clusters"][0]["cluster"]["server"]
        try:
            with urllib.request.urlopen(server + path, timeout=10) as rsp:
                found: dict[str, Any] = json.loads(rsp.read())
                return found
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            raise

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def local_api(tmp_path: Path, helm: Helm) -> Iterator[LocalApi]:
    api = LocalApi(tmp_path, helm)
    try:
        yield api
    finally:
        api.stop()


DAEMONSET = f"/apis/apps/v1/namespaces/{NAMESPACE}/daemonsets/{FULLNAME}"
RELEASE_SECRETS = f"/api/v1/namespaces/{NAMESPACE}/secrets"


def release_secrets(api: LocalApi) -> list[str]:
    listed = api.get(RELEASE_SECRETS)
    return sorted(s["metadata"]["name"] for s in (listed or {}).get("items", []))


def test_server_side_dry_run_installs_nothing(local_api: LocalApi) -> None:
    out = local_api.helm("install", RELEASE, str(CHART), "-n", NAMESPACE, "--create-namespace",
                         "--dry-run=server", *NO_POLICY).stdout
    assert f"kind: DaemonSet\nmetadata:\n  name: {FULLNAME}" in out
    assert local_api.releases() == []
    assert local_api.get(DAEMONSET) is None


def test_install_list_upgrade_and_uninstall_the_chart(local_api: LocalApi) -> None:
    local_api.helm("install", RELEASE, str(CHART), "-n", NAMESPACE, "--create-namespace", *NO_POLICY)
    [release] = local_api.releases()
    assert (release["name"], release["namespace"], release["revision"], release["status"]) == \
        (RELEASE, NAMESPACE, "1", "deployed")
    assert release_secrets(local_api) == [f"sh.helm.release.v1.{RELEASE}.v1"]
    secret = local_api.get(f"{RELEASE_SECRETS}/sh.helm.release.v1.{RELEASE}.v1")
    assert secret is not None and secret["type"] == "helm.sh/release.v1" and set(secret["data"]) == {"release"}
    daemonset = local_api.get(DAEMONSET)
    assert daemonset is not None
    assert "--log-level=INFO" in daemonset["spec"]["template"]["spec"]["containers"][0]["args"]
    for path in (f"/api/v1/namespaces/{NAMESPACE}/serviceaccounts/{FULLNAME}",
                 f"/apis/rbac.authorization.k8s.io/v1/clusterroles/{FULLNAME}",
                 f"/apis/rbac.authorization.k8s.io/v1/clusterrolebindings/{FULLNAME}",
                 f"/apis/rbac.authorization.k8s.io/v1/namespaces/{NAMESPACE}/roles/{FULLNAME}-leases",
                 f"/apis/rbac.authorization.k8s.io/v1/namespaces/{NAMESPACE}/rolebindings/{FULLNAME}-leases",
                 f"/api/v1/namespaces/{NAMESPACE}/services/{FULLNAME}-metrics"):
        assert local_api.get(path) is not None, path

    local_api.helm("upgrade", RELEASE, str(CHART), "-n", NAMESPACE, "--set", "operator.logLevel=DEBUG", *NO_POLICY)
    [release] = local_api.releases()
    assert (release["revision"], release["status"]) == ("2", "deployed")
    upgraded = local_api.get(DAEMONSET)
    assert upgraded is not None
    args = upgraded["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--log-level=DEBUG" in args and "--log-level=INFO" not in args
    assert "logLevel: DEBUG" in local_api.helm("get", "values", RELEASE, "-n", NAMESPACE).stdout

    local_api.helm("uninstall", RELEASE, "-n", NAMESPACE)
    assert local_api.releases() == []
    assert release_secrets(local_api) == []
    assert local_api.get(DAEMONSET) is None
    assert local_api.get(f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{CRD_NAME}") is not None


def test_install_on_an_api_without_admission_policies_is_refused_with_the_way_out(local_api: LocalApi) -> None:
    done = local_api.helm("install", RELEASE, str(CHART), "-n", NAMESPACE, "--create-namespace", check=False)
    assert done.returncode != 0
    assert "does not serve: set nodeRestriction.enabled=false" in done.stderr, done.stderr
    assert local_api.releases() == [] and local_api.get(DAEMONSET) is None

"""Two API targets for the differential suite: the real control plane and the project's API emulator.

Every test sends the same requests to both (`both`) and compares what they answered. The real control
plane (hack/cluster.sh, session-scoped) runs unless `LVO_API` names another API; the emulator
(`python -m kube_emulator` with the project's CRD, as local mode runs it) is started once per module.

On both, a session namespace holds the test objects and two test CRDs are registered through the API:
a copy of the project's VirtualMachine CRD under another group and names (`diffmachines`, with
`selectableFields: [.spec.nodeName]`), and the emulator tests' fixture CRD (more schema features) under
another group. The project's own CRD is never touched. On the real server the session then waits until
the DiffMachines' watch cache sends bookmarks. Teardown removes finalizers, the namespace and the test CRDs.
"""

from __future__ import annotations

import copy
import os
import re
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml

from testbed.control_plane import CRDS, ControlPlane
from testbed.emulator_api import EmulatorApi
from testbed.polling import wait_for
from tests.differential.target import MERGE, Api

HERE = Path(__file__).resolve().parent
RUN = secrets.token_hex(3)  # one run's names: a rerun never meets a previous run's leftovers
NS = f"lvo-diff-{RUN}"
T = TypeVar("T")

VM_GROUP, VM_VERSION, VM_PLURAL = "virt.libvirt-operator.dev", "v1alpha1", "virtualmachines"
DM_GROUP, DM_VERSION, DM_PLURAL, DM_KIND = "diff.libvirt-operator.test", "v1alpha1", "diffmachines", "DiffMachine"
GADGET_GROUP, GADGET_VERSION, GADGET_PLURAL = "differential.libvirt-operator.test", "v1", "gadgets"
DM = f"/apis/{DM_GROUP}/{DM_VERSION}"
GADGETS = f"/apis/{GADGET_GROUP}/{GADGET_VERSION}"


def _diff_machine_crd() -> dict[str, Any]:
    """The project's CRD under a group and names of its own, with spec.nodeName as a selectable field."""
    crd: dict[str, Any] = copy.deepcopy(yaml.safe_load((CRDS / f"{VM_PLURAL}.{VM_GROUP}.yaml").read_text()))
    crd["metadata"] = {"name": f"{DM_PLURAL}.{DM_GROUP}"}
    crd["spec"]["group"] = DM_GROUP
    crd["spec"]["names"] = {"kind": DM_KIND, "listKind": f"{DM_KIND}List", "plural": DM_PLURAL,
                            "singular": "diffmachine", "shortNames": ["dfm"], "categories": ["lvo-diff"]}
    for version in crd["spec"]["versions"]:
        version["selectableFields"] = [{"jsonPath": ".spec.nodeName"}]
    return crd


def _gadget_crd() -> dict[str, Any]:
    crd: dict[str, Any] = yaml.safe_load((HERE.parent / "emulator" / "fixture-crd.yaml").read_text())
    crd["metadata"] = {"name": f"{GADGET_PLURAL}.{GADGET_GROUP}"}
    crd["spec"]["group"] = GADGET_GROUP
    crd["spec"]["names"]["shortNames"] = ["dgdg"]
    crd["spec"]["names"]["categories"] = ["lvo-diff"]
    return crd


TEST_CRDS = (_diff_machine_crd(), _gadget_crd())
CRDS_PATH = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"


def ns_path(base: str, plural: str, name: str = "", namespace: str = NS) -> str:
    return f"{base}/namespaces/{namespace}/{plural}" + (f"/{name}" if name else "")


def established(api: Api, crd_name: str) -> bool:
    reply = api.get(f"{CRDS_PATH}/{crd_name}")
    conditions = (reply.body or {}).get("status", {}).get("conditions") or [] if reply.status == 200 else []
    return any(c["type"] == "Established" and c["status"] == "True" for c in conditions)


def served(api: Api, path: str) -> bool:
    return api.get(path).status == 200


def register_crd(api: Api, crd: dict[str, Any]) -> None:
    """Create (or recreate, from a crashed run) a CRD and wait until its resource is served."""
    name = crd["metadata"]["name"]
    reply = api.post(CRDS_PATH, crd)
    if reply.status == 409:
        current = api.ok("GET", f"{CRDS_PATH}/{name}")
        api.ok("PUT", f"{CRDS_PATH}/{name}", {**crd, "metadata": {**crd["metadata"], "resourceVersion":
                                                                   current["metadata"]["resourceVersion"]}})
    else:
        assert reply.status == 201, f"{api.name}: creating CRD {name}: {reply.status} {reply.text}"
    spec = crd["spec"]
    wait_for(lambda: established(api, name), timeout=60, what=f"{api.name}: CRD {name} Established")
    path = f"/apis/{spec['group']}/{spec['versions'][0]['name']}/{spec['names']['plural']}"
    wait_for(lambda: served(api, path), timeout=60, what=f"{api.name}: {path} served")


def bookmarked_a_hidden_change(api: Api, path: str, make: Callable[[str], dict[str, Any]], name: str) -> bool:
    """One 3-second watch of `path` that a change its selector hides happens under: True when the watch's
    pre-timeout BOOKMARK carried that change's resourceVersion. The object is deleted again."""
    quiet = {"labelSelector": "lvo-diff=none"}
    rv = api.ok("GET", path, query=quiet)["metadata"]["resourceVersion"]
    with api.watch(path, {**quiet, "resourceVersion": rv, "allowWatchBookmarks": "true", "timeoutSeconds": 3}) as w:
        created = api.ok("POST", path, make(name))
        events = w.wait_end(timeout=15)
    api.ok("DELETE", f"{path}/{name}")
    change = int(created["metadata"]["resourceVersion"])
    return any(e["type"] == "BOOKMARK" and int(e["object"]["metadata"]["resourceVersion"]) >= change
               for e in events)


def wait_for_bookmarks(api: Api, path: str, make: Callable[[str], dict[str, Any]]) -> None:
    """Until the resource's watch cache sends bookmarks. kube 1.34's cache of a CRD served a moment ago
    does not yet (its watches of the first second or so got no pre-timeout BOOKMARK), which the bookmark
    tests would read as a difference."""
    attempts = iter(range(100))
    wait_for(lambda: bookmarked_a_hidden_change(api, path, make, f"bookmark-probe-{next(attempts)}"),
             timeout=60, what=f"{api.name}: bookmarks from the watch cache of {path}")


def remove_finalizers(api: Api, list_path: str) -> None:
    reply = api.get(list_path)
    for item in (reply.body or {}).get("items", []) if reply.status == 200 else []:
        if item["metadata"].get("finalizers"):
            api.patch(f"{list_path}/{item['metadata']['name']}", {"metadata": {"finalizers": None}})


def prepare(api: Api) -> None:
    api.ok("POST", "/api/v1/namespaces", {"metadata": {"name": NS}})
    for crd in TEST_CRDS:
        register_crd(api, crd)


def clean_up(api: Api) -> None:
    """Nothing of this run left behind (the real control plane outlives the session)."""
    for base, plural in ((DM, DM_PLURAL), (GADGETS, GADGET_PLURAL), (f"/apis/{VM_GROUP}/{VM_VERSION}", VM_PLURAL)):
        remove_finalizers(api, ns_path(base, plural))
    api.delete(f"/api/v1/namespaces/{NS}")
    for crd in TEST_CRDS:
        api.delete(f"{CRDS_PATH}/{crd['metadata']['name']}")


@pytest.fixture(scope="session")
def real(control_plane: ControlPlane) -> Iterator[Api]:
    """The real kube-apiserver (skipped unless LVO_API is unset or "real"), as its admin."""
    if os.environ.get("LVO_API", "real") != "real":
        pytest.skip("LVO_API is not 'real': no real control plane to compare with")
    api = Api("real", control_plane.admin_kubeconfig)
    prepare(api)
    wait_for_bookmarks(api, ns_path(DM, DM_PLURAL), dm)
    try:
        yield api
    finally:
        clean_up(api)


@pytest.fixture(scope="module")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    """The project's API emulator in a process of its own, with the project's CRD (as local mode runs it)."""
    server = EmulatorApi(tmp_path_factory.mktemp("emulator"))
    server.start()
    try:
        api = Api("emulator", server.kubeconfig)
        prepare(api)
        yield api
    finally:
        server.stop()


@pytest.fixture
def apis(real: Api, emulator: Api) -> tuple[Api, Api]:
    return real, emulator


def both(apis: tuple[Api, Api], scenario: Callable[[Api], T]) -> tuple[T, T]:
    """The same scenario on the real server, then on the emulator: (real's result, emulator's)."""
    real_api, emulator_api = apis
    return scenario(real_api), scenario(emulator_api)


@pytest.fixture
def unique(request: pytest.FixtureRequest) -> Callable[[str], str]:
    """Names unique to one test (the same on both servers, so that they compare equal)."""
    counter = iter(range(1000))
    base = re.sub(r"[^a-z0-9]+", "-", request.node.name.removeprefix("test_").lower())[:40].strip("-")

    def make(stem: str = "") -> str:
        return f"{base}-{stem or next(counter)}"[:63].strip("-")

    return make


def dm(name: str, **spec: Any) -> dict[str, Any]:
    """A DiffMachine (the project's VirtualMachine schema) in the session namespace."""
    return {"apiVersion": f"{DM_GROUP}/{DM_VERSION}", "kind": DM_KIND, "metadata": {"name": name, "namespace": NS},
            "spec": {"nodeName": "node-a", "memory": "64Mi", **spec}}


def gadget(name: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": f"{GADGET_GROUP}/{GADGET_VERSION}", "kind": "Gadget",
            "metadata": {"name": name, "namespace": NS}, "spec": {"color": "red", **spec}}


__all__ = ["DM", "GADGETS", "MERGE", "NS", "RUN", "both", "dm", "gadget", "ns_path"]

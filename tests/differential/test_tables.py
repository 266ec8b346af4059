"""Tables, as `kubectl get` asks for them: column definitions, row cells, the embedded objects."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tests.differential.conftest import CRDS_PATH, DM, DM_PLURAL, NS, TEST_CRDS, both, dm, ns_path
from tests.differential.target import TABLE, Api, assert_same, normalise

JSON = dict[str, Any]
Names = Callable[[str], str]
PATH = ns_path(DM, DM_PLURAL)
KUBECTL_ACCEPT = f"{TABLE},application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json"


def _table(api: Api, path: str, query: JSON | None = None, accept: str = TABLE) -> JSON:
    reply = api.get(path, query=query, accept=accept)
    assert reply.status == 200, f"{api.name}: {path}: {reply.status} {reply.text[:500]}"
    found: JSON = normalise(reply.body, ages=True)
    return found


@pytest.fixture
def machines(apis: tuple[Api, Api], unique: Names) -> str:
    """Two DiffMachines (one with a status) labelled for this test; returns the label selector."""
    test = unique("t")
    for api in apis:
        for name, strategy in (("a", "Always"), ("b", "Halted")):
            body = dm(unique(name), runStrategy=strategy)
            body["metadata"]["labels"] = {"test": test}
            api.ok("POST", PATH, body)
        status = {"status": {"phase": "Running", "powerState": "Running", "domainName": f"{NS}_{unique('a')}",
                             "conditions": [{"type": "Ready", "status": "True", "reason": "Running",
                                             "lastTransitionTime": "2025-01-01T00:00:00Z"}]}}
        api.ok("PATCH", f"{PATH}/{unique('a')}/status", status, content_type="application/merge-patch+json")
    return f"test={test}"


def test_list_as_a_table_has_the_crd_columns_and_cells(apis: tuple[Api, Api], machines: str) -> None:
    real, emulated = both(apis, lambda api: _table(api, PATH, {"labelSelector": machines}))
    assert [c["name"] for c in real["columnDefinitions"]] == ["Name", "Phase", "Power", "Node", "Age", "Strategy",
                                                              "Domain", "Ready"]
    assert_same(real, emulated)


def test_one_object_as_a_table(apis: tuple[Api, Api], machines: str, unique: Names) -> None:
    real, emulated = both(apis, lambda api: _table(api, f"{PATH}/{unique('a')}", accept=KUBECTL_ACCEPT))
    assert_same(real, emulated)


@pytest.mark.parametrize("include", ["None", "Metadata", "Object"])
def test_include_object(apis: tuple[Api, Api], machines: str, include: str) -> None:
    real, emulated = both(apis, lambda api: _table(api, PATH, {"labelSelector": machines, "includeObject": include}))
    assert_same(real, emulated)


def test_builtin_tables(apis: tuple[Api, Api]) -> None:
    """Namespaces have kube's own columns; CRDs the default Name / Created At."""
    crd = TEST_CRDS[0]["metadata"]["name"]
    for path in (f"/api/v1/namespaces/{NS}", f"{CRDS_PATH}/{crd}"):
        real, emulated = both(apis, lambda api, p=path: _table(api, p))  # type: ignore[misc]
        assert_same(real, emulated, path)


def test_a_watch_streams_tables(apis: tuple[Api, Api], machines: str, unique: Names) -> None:
    def scenario(api: Api) -> tuple[list[tuple[str, str]], list[JSON]]:
        rv = api.ok("GET", PATH, query={"labelSelector": machines})["metadata"]["resourceVersion"]
        api.ok("PATCH", f"{PATH}/{unique('b')}", {"spec": {"paused": True}},
               content_type="application/merge-patch+json")
        api.ok("DELETE", f"{PATH}/{unique('b')}")
        with api.watch(PATH, {"resourceVersion": rv, "labelSelector": machines, "timeoutSeconds": 10},
                       accept=TABLE) as w:
            events = w.wait_count(2)
        return [(e["type"], e["object"]["kind"]) for e in events], [normalise(e["object"], ages=True)
                                                                     for e in events]

    real, emulated = both(apis, scenario)
    assert real[0] == [("MODIFIED", "Table"), ("DELETED", "Table")]
    assert_same(real, emulated)



"""Label and field selectors on lists: what matches, and what is refused (with kube's messages)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.differential.conftest import DM, DM_PLURAL, GADGET_PLURAL, GADGETS, NS, both, dm, gadget, ns_path
from tests.differential.target import Api, assert_same, names

JSON = dict[str, Any]
PATH = ns_path(DM, DM_PLURAL)
SET = "sel"  # every object of this module carries set=sel, so that lists see only them
MACHINES = {  # name -> (labels, nodeName)
    "sel-web-prod": ({"tier": "web", "env": "prod", "rank": "5"}, "node-a"),
    "sel-web-dev": ({"tier": "web", "env": "dev", "rank": "2"}, "node-b"),
    "sel-db-prod": ({"tier": "db", "env": "prod"}, "node-a"),
    "sel-cache": ({"tier": "cache"}, "node-c"),
}


def _create(api: Api) -> None:
    for name, (labels, node) in MACHINES.items():
        body = dm(name, nodeName=node)
        body["metadata"]["labels"] = {"set": SET, **labels}
        api.ok("POST", PATH, body)
    for name, color in (("sel-red", "red"), ("sel-blue", "blue")):
        body = gadget(name, color=color)
        body["metadata"]["labels"] = {"set": SET}
        api.ok("POST", ns_path(GADGETS, GADGET_PLURAL), body)


@pytest.fixture(scope="module")
def populated(real: Api, emulator: Api) -> tuple[Api, Api]:
    for api in (real, emulator):
        _create(api)
    return real, emulator


def _list(api: Api, path: str, query: JSON) -> JSON:
    reply = api.get(path, query=query)
    if reply.status == 200:
        return {"code": 200, "names": sorted(names(reply.body["items"]))}
    return {"code": reply.status, "reason": reply.body.get("reason"), "message": reply.body.get("message")}


LABEL_SELECTORS = [
    "tier=web", "tier==web", "tier!=web", "tier in (web,db)", "tier notin (web, cache)", "env", "!env",
    "tier=web,env=prod", "rank>3", "rank<3", "rank>x",
]
# Known difference (docs/emulator.md): a selector the emulator's parser cannot read is a 400 BadRequest as
# in kube, but worded after the whole requirement rather than after the lexer's token.
MALFORMED = {
    "tier in (web": ("unable to parse requirement: found '', expected: ',' or ')'",
                     "unable to parse requirement: found 'tier in (web', expected: a label selector requirement"),
    "tier=web,,env=prod": ("found ',', expected: identifier after ','",
                           "unable to parse requirement: found '', expected: a label selector requirement"),
    "tier=we b": ("found 'b', expected: ',' or 'end of string'",
                  "unable to parse requirement: found 'tier=we b', expected: a label selector requirement"),
}


@pytest.mark.parametrize("selector", LABEL_SELECTORS)
def test_label_selector(populated: tuple[Api, Api], selector: str) -> None:
    real, emulated = both(populated, lambda api: _list(api, PATH, {"labelSelector": f"set={SET},{selector}"}))
    assert_same(real, emulated, selector)


@pytest.mark.parametrize("selector", list(MALFORMED))
def test_malformed_label_selector_is_a_400_worded_differently(populated: tuple[Api, Api], selector: str) -> None:
    real, emulated = both(populated, lambda api: _list(api, PATH, {"labelSelector": f"set={SET},{selector}"}))
    real_message, emulator_message = MALFORMED[selector]
    assert real == {"code": 400, "reason": "BadRequest", "message": real_message}
    assert emulated == {"code": 400, "reason": "BadRequest", "message": emulator_message}


FIELD_SELECTORS = [
    "metadata.name=sel-cache", "metadata.name!=sel-cache", "metadata.name==sel-cache",
    f"metadata.namespace={NS}", "metadata.namespace=elsewhere", "spec.nodeName=node-a",
    "spec.nodeName!=node-a,metadata.name!=sel-cache", "spec.runStrategy=Always", "status.phase=Running",
    "metadata.name", "metadata.uid=x",
]


@pytest.mark.parametrize("selector", FIELD_SELECTORS)
def test_field_selector(populated: tuple[Api, Api], selector: str) -> None:
    real, emulated = both(populated, lambda api: _list(api, PATH, {"labelSelector": f"set={SET}",
                                                                  "fieldSelector": selector}))
    assert_same(real, emulated, selector)


def test_field_selector_across_namespaces(populated: tuple[Api, Api]) -> None:
    query = {"labelSelector": f"set={SET}", "fieldSelector": f"metadata.namespace={NS},spec.nodeName=node-a"}
    real, emulated = both(populated, lambda api: _list(api, f"{DM}/{DM_PLURAL}", query))
    assert real == {"code": 200, "names": ["sel-db-prod", "sel-web-prod"]}
    assert_same(real, emulated)


def test_selectable_fields_are_per_crd(populated: tuple[Api, Api]) -> None:
    """The gadget CRD declares .spec.color selectable, not .spec.nodeName (the DiffMachine CRD does)."""
    def scenario(api: Api) -> list[JSON]:
        path = ns_path(GADGETS, GADGET_PLURAL)
        return [_list(api, path, {"labelSelector": f"set={SET}", "fieldSelector": "spec.color=blue"}),
                _list(api, path, {"labelSelector": f"set={SET}", "fieldSelector": "spec.nodeName=node-a"})]

    real, emulated = both(populated, scenario)
    assert real[0] == {"code": 200, "names": ["sel-blue"]}
    assert_same(real, emulated)


def test_pages_with_limit_and_continue(populated: tuple[Api, Api]) -> None:
    def scenario(api: Api) -> list[JSON]:
        pages = []
        query: JSON = {"labelSelector": f"set={SET}", "limit": 3}
        while True:
            body = api.ok("GET", PATH, query=query)
            meta = body["metadata"]
            pages.append({"names": names(body["items"]), "continues": bool(meta.get("continue")),
                          "remainingItemCount": meta.get("remainingItemCount")})
            if not meta.get("continue"):
                return pages
            query = {**query, "continue": meta["continue"]}

    real, emulated = both(populated, scenario)
    assert [p["names"] for p in real] == [["sel-cache", "sel-db-prod", "sel-web-dev"], ["sel-web-prod"]]
    assert_same(real, emulated)

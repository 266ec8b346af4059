"""Watch streams: event sequences from a resourceVersion, initial events, selectors, finalizers, bookmarks,
410 Expired, and what a watch refuses."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from tests.differential.conftest import DM, DM_PLURAL, GADGET_PLURAL, GADGETS, both, dm, ns_path
from tests.differential.target import MERGE, Api, assert_same, event_summary, normalise

JSON = dict[str, Any]
Names = Callable[[str], str]
PATH = ns_path(DM, DM_PLURAL)


def labelled(name: str, test: str, **labels: str) -> JSON:
    body = dm(name)
    body["metadata"]["labels"] = {"test": test, **labels}
    return body


def current_rv(api: Api, selector: str) -> str:
    rv: str = api.ok("GET", PATH, query={"labelSelector": selector})["metadata"]["resourceVersion"]
    return rv


def objects(events: list[JSON]) -> list[JSON]:
    """Each event's object, normalised, without what only a BOOKMARK's resourceVersion would tell."""
    return [normalise(e["object"]) for e in events]


def test_watch_from_a_resource_version_replays_the_changes_in_order(apis: tuple[Api, Api], unique: Names) -> None:
    test = unique("t")

    def scenario(api: Api) -> tuple[list[tuple[str, str]], list[JSON]]:
        rv = current_rv(api, f"test={test}")
        for name in ("a", "b", "c"):
            api.ok("POST", PATH, labelled(unique(name), test))
        api.ok("PATCH", f"{PATH}/{unique('a')}", {"spec": {"paused": True}}, content_type=MERGE)
        api.ok("DELETE", f"{PATH}/{unique('b')}")
        with api.watch(PATH, {"resourceVersion": rv, "labelSelector": f"test={test}", "timeoutSeconds": 10}) as w:
            events = w.wait_count(5)
        return event_summary(events), objects(events)

    real, emulated = both(apis, scenario)
    assert real[0] == [("ADDED", unique("a")), ("ADDED", unique("b")), ("ADDED", unique("c")),
                       ("MODIFIED", unique("a")), ("DELETED", unique("b"))]
    assert_same(real, emulated)


def test_watch_without_resource_version_starts_with_the_current_objects(apis: tuple[Api, Api],
                                                                      unique: Names) -> None:
    test = unique("t")

    def scenario(api: Api) -> list[tuple[str, str]]:
        api.ok("POST", PATH, labelled(unique("a"), test))
        query = {"labelSelector": f"test={test}", "timeoutSeconds": 10}
        with api.watch(PATH, query) as plain, api.watch(PATH, {**query, "resourceVersion": "0"}) as zero:
            plain.wait_count(1)
            zero.wait_count(1)
            api.ok("POST", PATH, labelled(unique("b"), test))
            return event_summary(plain.wait_count(2)) + event_summary(zero.wait_count(2))

    real, emulated = both(apis, scenario)
    assert_same(real, emulated)


def test_watch_list_ends_the_initial_events_with_an_annotated_bookmark(apis: tuple[Api, Api],
                                                                       unique: Names) -> None:
    """kube 1.34 turns a watch without resourceVersion into a watch-list (sendInitialEvents) by default."""
    test = unique("t")

    def scenario(api: Api) -> list[Any]:
        api.ok("POST", PATH, labelled(unique("a"), test))
        query = {"labelSelector": f"test={test}", "timeoutSeconds": 10, "allowWatchBookmarks": "true"}
        found: list[Any] = []
        watch_list = {"sendInitialEvents": "true", "resourceVersionMatch": "NotOlderThan"}
        for extra in ({}, {"resourceVersion": "0"}, watch_list):
            with api.watch(PATH, {**query, **extra}) as w:
                events = w.wait_count(2)
                found.append(event_summary(events))
                found.append(objects(events))
        return found

    real, emulated = both(apis, scenario)
    assert real[0] == [("ADDED", unique("a")), ("BOOKMARK", "DiffMachine")]
    assert real[1][1]["metadata"] == {"annotations": {"k8s.io/initial-events-end": "true"},
                                      "resourceVersion": "<resourceVersion>"}
    assert_same(real, emulated)


def test_selector_changes_are_added_and_deleted_events(apis: tuple[Api, Api], unique: Names) -> None:
    test = unique("t")
    name = unique("a")

    def scenario(api: Api) -> list[tuple[str, str]]:
        rv = current_rv(api, f"test={test}")
        api.ok("POST", PATH, labelled(name, test))
        for labels in ({"x": "1"}, {"y": "2"}, {"x": None}, {"x": "1"}):  # merge patches: None removes
            api.ok("PATCH", f"{PATH}/{name}", {"metadata": {"labels": labels}}, content_type=MERGE)
        with api.watch(PATH, {"resourceVersion": rv, "labelSelector": "x=1", "timeoutSeconds": 10}) as by_label, \
                api.watch(PATH, {"resourceVersion": rv, "fieldSelector": f"metadata.name={name}",
                                 "timeoutSeconds": 10}) as by_name:
            return event_summary(by_label.wait_count(4)) + event_summary(by_name.wait_count(5))

    real, emulated = both(apis, scenario)
    assert real[:4] == [("ADDED", name), ("MODIFIED", name), ("DELETED", name), ("ADDED", name)]
    assert_same(real, emulated)


def test_finalizers_delay_the_deleted_event(apis: tuple[Api, Api], unique: Names) -> None:
    test = unique("t")
    name = unique("a")

    def scenario(api: Api) -> tuple[list[tuple[str, str]], list[JSON]]:
        rv = current_rv(api, f"test={test}")
        body = labelled(name, test)
        body["metadata"]["finalizers"] = ["example.com/hold"]
        api.ok("POST", PATH, body)
        api.ok("DELETE", f"{PATH}/{name}")
        api.ok("PATCH", f"{PATH}/{name}", {"metadata": {"finalizers": None}}, content_type=MERGE)
        with api.watch(PATH, {"resourceVersion": rv, "labelSelector": f"test={test}", "timeoutSeconds": 10}) as w:
            events = w.wait_count(3)
        return event_summary(events), objects(events)

    real, emulated = both(apis, scenario)
    # No MODIFIED for the last finalizer's removal: kube deletes instead of updating.
    assert real[0] == [("ADDED", name), ("MODIFIED", name), ("DELETED", name)]
    assert_same(real, emulated)


def test_bookmark_before_the_watch_times_out(apis: tuple[Api, Api], unique: Names) -> None:
    """kube's watch cache sends a BOOKMARK 2 s before the deadline (and otherwise once a minute), with the
    resourceVersion of the resource's latest change, if that is newer than the watch's start: a change
    the watch's selector hides makes one (even in another namespace); a watch on a resource that did not
    change gets no change event. (kube's timer has one-second buckets, so the pre-timeout BOOKMARK may come
    twice.) Whether that idle watch gets a BOOKMARK is not compared: its watch cache moves on with etcd's
    progress notification, which a consistent list of that resource requests, and the namespace controller
    lists every namespaced resource whenever any namespace is being deleted, as other lanes' tests do
    (seen: a BOOKMARK on the idle watch in CI, and in each of 6 tries while namespaces were deleted)."""
    test = unique("t")

    def scenario(api: Api) -> list[Any]:
        rv = current_rv(api, f"test={test}")
        query = {"resourceVersion": rv, "labelSelector": f"test={test}", "allowWatchBookmarks": "true",
                 "timeoutSeconds": 3}
        with api.watch(PATH, query) as moved, api.watch(ns_path(GADGETS, GADGET_PLURAL), query) as idle:
            hidden = api.ok("POST", PATH, labelled(unique("hidden"), unique("other")))
            events = moved.wait_end(timeout=15)
            idle_events = idle.wait_end(timeout=15)
        bookmarked = {int(e["object"]["metadata"]["resourceVersion"]) >= int(hidden["metadata"]["resourceVersion"])
                      for e in events}
        distinct = sorted({json.dumps(o, sort_keys=True) for o in objects(events)})
        idle_changes = [e for e in event_summary(idle_events) if e[0] != "BOOKMARK"]
        return [sorted(set(event_summary(events))), distinct, bookmarked, idle_changes]

    real, emulated = both(apis, scenario)
    assert real[0] == [("BOOKMARK", "DiffMachine")] and real[2] == {True}
    assert real[3] == []
    assert_same(real, emulated)


def test_a_too_old_resource_version_is_a_410_expired_event(apis: tuple[Api, Api]) -> None:
    """Resource version 1 predates every watch cache (each starts at its server's start): 410 Expired."""
    def scenario(api: Api) -> list[Any]:
        with api.watch(PATH, {"resourceVersion": "1", "timeoutSeconds": 10}) as w:
            events = w.wait_end()
        return [w.status, [e["type"] for e in events], {k: v for k, v in events[0]["object"].items()
                                                         if k != "message"},
                events[0]["object"]["message"].startswith("too old resource version: 1 (")]

    real, emulated = both(apis, scenario)
    assert real[1] == ["ERROR"]
    assert_same(real, emulated)


def test_watch_options_that_are_refused(apis: tuple[Api, Api]) -> None:
    def scenario(api: Api) -> list[JSON]:
        refused = []
        for query in ({"sendInitialEvents": "true"},
                      {"resourceVersionMatch": "NotOlderThan"},
                      {"sendInitialEvents": "true", "resourceVersionMatch": "Exact"}):
            with api.watch(PATH, {**query, "timeoutSeconds": 1}) as w:
                events = w.wait_end()
            refused.append({"status": w.status, "events": events})
        return refused

    real, emulated = both(apis, scenario)
    assert [r["status"] for r in real] == [422, 422, 422]
    assert_same(real, emulated)


def test_a_malformed_resource_version(apis: tuple[Api, Api]) -> None:
    def scenario(api: Api) -> list[JSON]:
        listed = api.get(PATH, query={"resourceVersion": "abc"})
        with api.watch(PATH, {"resourceVersion": "abc", "timeoutSeconds": 1}) as w:
            events = w.wait_end()
        return [{"status": listed.status, "body": listed.body}, {"status": w.status, "events": events}]

    real, emulated = both(apis, scenario)
    assert_same(real, emulated)

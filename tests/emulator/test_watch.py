"""Watch streams through the kubernetes client's watch.Watch and raw chunked HTTP."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import kubernetes
import pytest
import requests
from kubernetes import watch
from kubernetes.client import ApiException

from tests.conftest import wait_for
from tests.emulator.conftest import FIXTURE_CRD, GROUP, PLURAL, VERSION, EmulatorThread, gadget, make_api_client

BASE = f"/apis/{GROUP}/{VERSION}"


@pytest.fixture
def custom(api: kubernetes.client.ApiClient) -> kubernetes.client.CustomObjectsApi:
    return kubernetes.client.CustomObjectsApi(api)


def stream(emu: EmulatorThread, path: str, headers: dict[str, str] | None = None,
           timeout: float = 10) -> Iterator[dict[str, Any]]:
    """Raw watch events; the server must end the stream (timeoutSeconds) or the test stops reading."""
    with requests.get(emu.url + path, stream=True, headers=headers or {}, timeout=timeout) as rsp:
        assert rsp.status_code == 200
        assert rsp.headers["Content-Type"] == "application/json"
        for line in rsp.iter_lines():
            if line:
                yield json.loads(line)


def collect(emu: EmulatorThread, path: str, count: int) -> list[dict[str, Any]]:
    """The first `count` events of a watch (it must have timeoutSeconds as a safety net)."""
    events = []
    for event in stream(emu, path):
        events.append(event)
        if len(events) == count:
            break
    return events


def changes(custom: kubernetes.client.CustomObjectsApi) -> None:
    custom.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, gadget("a"))
    custom.patch_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, "a", {"spec": {"size": 2}})
    custom.delete_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, "a")


def test_client_watch_from_a_resource_version_sees_changes_in_order(
        custom: kubernetes.client.CustomObjectsApi) -> None:
    start = custom.list_namespaced_custom_object(GROUP, VERSION, "default", PLURAL)["metadata"]["resourceVersion"]
    changes(custom)
    seen = []
    for event in watch.Watch().stream(custom.list_namespaced_custom_object, GROUP, VERSION, "default", PLURAL,
                                      resource_version=start, timeout_seconds=5):
        seen.append((event["type"], event["object"]["metadata"]["name"],
                     int(event["object"]["metadata"]["resourceVersion"])))
        if event["type"] == "DELETED":
            break
    assert [s[0] for s in seen] == ["ADDED", "MODIFIED", "DELETED"]
    assert [s[2] for s in seen] == sorted(s[2] for s in seen)


def test_client_watch_of_typed_namespaces_starts_with_current_objects(api: kubernetes.client.ApiClient) -> None:
    core = kubernetes.client.CoreV1Api(api)
    names = set()
    for event in watch.Watch().stream(core.list_namespace, timeout_seconds=5):
        assert event["type"] == "ADDED"
        names.add(event["object"].metadata.name)
        if {"default", "kube-system", "kube-public"} <= names:
            break
    assert {"default", "kube-system", "kube-public"} <= names


def test_watch_without_resource_version_sends_current_objects_then_changes(
        emu: EmulatorThread, custom: kubernetes.client.CustomObjectsApi) -> None:
    custom.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, gadget("old"))
    events: list[tuple[str, str]] = []

    def reader() -> None:
        for event in stream(emu, f"{BASE}/{PLURAL}?watch=1&timeoutSeconds=3"):
            events.append((event["type"], event["object"]["metadata"]["name"]))
            if event["type"] == "DELETED":
                return

    thread = threading.Thread(target=reader)
    thread.start()
    wait_for(lambda: events, what="the initial ADDED event")
    changes(custom)
    thread.join(10)
    assert events == [("ADDED", "old"), ("ADDED", "a"), ("MODIFIED", "a"), ("DELETED", "a")]


def test_watch_zero_resource_version_lists_current_objects(emu: EmulatorThread,
                                                           custom: kubernetes.client.CustomObjectsApi) -> None:
    custom.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, gadget("a"))
    events = collect(emu, f"{BASE}/namespaces/default/{PLURAL}?watch=true&resourceVersion=0&timeoutSeconds=5", 1)
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [("ADDED", "a")]


def test_bookmarks_carry_the_resource_version_of_the_latest_change(emu: EmulatorThread,
                                                                    custom: kubernetes.client.CustomObjectsApi) -> None:
    custom.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, gadget("a"))
    rv = custom.list_namespaced_custom_object(GROUP, VERSION, "default", PLURAL)["metadata"]["resourceVersion"]
    events = stream(emu, f"{BASE}/{PLURAL}?watch=1&allowWatchBookmarks=true&resourceVersion={rv}"
                         "&labelSelector=shown%3Dyes&timeoutSeconds=5")
    hidden = custom.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, gadget("b"))
    event = next(events)
    assert event["type"] == "BOOKMARK"
    assert event["object"] == {"kind": "Gadget", "apiVersion": f"{GROUP}/{VERSION}",
                               "metadata": {"resourceVersion": hidden["metadata"]["resourceVersion"]}}


def test_no_bookmark_while_the_resource_has_not_changed(emu: EmulatorThread,
                                                        custom: kubernetes.client.CustomObjectsApi) -> None:
    rv = custom.list_namespaced_custom_object(GROUP, VERSION, "default", PLURAL)["metadata"]["resourceVersion"]
    assert list(stream(emu, f"{BASE}/{PLURAL}?watch=1&allowWatchBookmarks=true&resourceVersion={rv}"
                            "&timeoutSeconds=1")) == []


def test_a_watch_without_resource_version_is_a_watch_list(emu: EmulatorThread,
                                                          custom: kubernetes.client.CustomObjectsApi) -> None:
    """As in kube 1.34: sendInitialEvents is implied, so bookmarks end the initial events."""
    custom.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, gadget("a"))
    events = collect(emu, f"{BASE}/{PLURAL}?watch=1&allowWatchBookmarks=true&timeoutSeconds=5", 2)
    assert [e["type"] for e in events] == ["ADDED", "BOOKMARK"]
    assert events[1]["object"]["metadata"]["annotations"] == {"k8s.io/initial-events-end": "true"}


def test_bookmark_two_seconds_before_the_timeout() -> None:
    server = EmulatorThread(crd_paths=[FIXTURE_CRD])  # the default bookmark interval: longer than the watch
    try:
        client = make_api_client(server.url)
        custom = kubernetes.client.CustomObjectsApi(client)
        rv = custom.list_namespaced_custom_object(GROUP, VERSION, "default", PLURAL)["metadata"]["resourceVersion"]
        events = stream(server, f"{BASE}/{PLURAL}?watch=1&allowWatchBookmarks=true&resourceVersion={rv}"
                                "&labelSelector=shown%3Dyes&timeoutSeconds=3")
        custom.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, gadget("hidden"))
        started = time.monotonic()
        assert next(events)["type"] == "BOOKMARK"
        assert time.monotonic() - started < 2
        assert list(events) == []
        client.close()
    finally:
        server.close()


def test_send_initial_events_ends_with_an_annotated_bookmark(emu: EmulatorThread,
                                                             custom: kubernetes.client.CustomObjectsApi) -> None:
    custom.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, gadget("a"))
    events = stream(emu, f"{BASE}/{PLURAL}?watch=1&allowWatchBookmarks=true&sendInitialEvents=true"
                         "&resourceVersionMatch=NotOlderThan&timeoutSeconds=5")
    first, second = next(events), next(events)
    assert first["type"] == "ADDED" and first["object"]["metadata"]["name"] == "a"
    assert second["type"] == "BOOKMARK"
    assert second["object"]["metadata"]["annotations"] == {"k8s.io/initial-events-end": "true"}


def test_timeout_seconds_ends_the_stream(emu: EmulatorThread, custom: kubernetes.client.CustomObjectsApi) -> None:
    rv = custom.list_namespaced_custom_object(GROUP, VERSION, "default", PLURAL)["metadata"]["resourceVersion"]
    assert list(stream(emu, f"{BASE}/{PLURAL}?watch=1&resourceVersion={rv}&timeoutSeconds=1")) == []


def test_a_resource_version_from_before_the_start_is_410_expired(emu: EmulatorThread) -> None:
    """The watch cache starts with the server: resourceVersion 1 (a built-in namespace's) is too old."""
    events = list(stream(emu, f"{BASE}/{PLURAL}?watch=1&resourceVersion=1&timeoutSeconds=1"))
    assert [(e["type"], e["object"]["code"], e["object"]["reason"]) for e in events] == [("ERROR", 410, "Expired")]


def test_too_old_resource_version_is_a_410_expired_error_event(api: kubernetes.client.ApiClient) -> None:
    server = EmulatorThread(crd_paths=[FIXTURE_CRD], history_limit=3)
    try:
        client = make_api_client(server.url)
        custom = kubernetes.client.CustomObjectsApi(client)
        for name in "abcde":
            custom.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, gadget(name))
        events = list(stream(server, f"{BASE}/{PLURAL}?watch=1&resourceVersion=2&timeoutSeconds=1"))
        assert len(events) == 1 and events[0]["type"] == "ERROR"
        assert events[0]["object"]["code"] == 410 and events[0]["object"]["reason"] == "Expired"
        assert events[0]["object"]["message"].startswith("too old resource version: 2 (")
        with pytest.raises(ApiException) as caught:
            list(watch.Watch().stream(custom.list_cluster_custom_object, GROUP, VERSION, PLURAL,
                                      resource_version="2", timeout_seconds=1))
        assert caught.value.status == 410
        assert server.call(lambda: server.emulator.store.history_size) == 3
        client.close()
    finally:
        server.close()


def test_selector_changes_turn_into_added_and_deleted(emu: EmulatorThread,
                                                      custom: kubernetes.client.CustomObjectsApi) -> None:
    rv = custom.list_namespaced_custom_object(GROUP, VERSION, "default", PLURAL)["metadata"]["resourceVersion"]
    custom.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, gadget("a"))
    custom.patch_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, "a", {"metadata": {"labels": {"x": "1"}}})
    custom.patch_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, "a", {"spec": {"size": 3}})
    custom.patch_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, "a", {"metadata": {"labels": None}})
    custom.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, gadget("b"))
    events = collect(emu, f"{BASE}/{PLURAL}?watch=1&labelSelector=x%3D1&resourceVersion={rv}&timeoutSeconds=5", 3)
    assert [e["type"] for e in events] == ["ADDED", "MODIFIED", "DELETED"]
    by_name = collect(emu, f"{BASE}/{PLURAL}?watch=1&fieldSelector=metadata.name%3Db&resourceVersion={rv}"
                           "&timeoutSeconds=5", 1)
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in by_name] == [("ADDED", "b")]


def test_namespaced_watch_sees_only_its_namespace(emu: EmulatorThread, custom: kubernetes.client.CustomObjectsApi,
                                                  api: kubernetes.client.ApiClient) -> None:
    kubernetes.client.CoreV1Api(api).create_namespace({"metadata": {"name": "other"}})
    rv = custom.list_namespaced_custom_object(GROUP, VERSION, "default", PLURAL)["metadata"]["resourceVersion"]
    custom.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, gadget("a"))
    custom.create_namespaced_custom_object(GROUP, VERSION, "other", PLURAL, gadget("b", "other"))
    custom.create_namespaced_custom_object(GROUP, VERSION, "other", PLURAL, gadget("c", "other"))
    scoped = collect(emu, f"{BASE}/namespaces/other/{PLURAL}?watch=1&resourceVersion={rv}&timeoutSeconds=5", 2)
    assert [e["object"]["metadata"]["name"] for e in scoped] == ["b", "c"]
    everywhere = collect(emu, f"{BASE}/{PLURAL}?watch=1&resourceVersion={rv}&timeoutSeconds=5", 3)
    assert [e["object"]["metadata"]["name"] for e in everywhere] == ["a", "b", "c"]


def test_finalizer_removal_streams_deleted_without_a_last_modified(emu: EmulatorThread,
                                                                   custom: kubernetes.client.CustomObjectsApi) -> None:
    body = gadget("a")
    body["metadata"]["finalizers"] = ["example.com/hold"]
    rv = custom.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, body)["metadata"]["resourceVersion"]
    custom.delete_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, "a")
    custom.patch_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, "a", {"metadata": {"finalizers": []}})
    events = collect(emu, f"{BASE}/{PLURAL}?watch=1&resourceVersion={rv}&timeoutSeconds=5", 2)
    assert [e["type"] for e in events] == ["MODIFIED", "DELETED"]  # as kube: the update became the delete
    assert events[0]["object"]["metadata"]["deletionTimestamp"]
    assert events[1]["object"]["metadata"]["finalizers"] == ["example.com/hold"]  # the object as last stored


def test_many_concurrent_watches_all_see_every_event(emu: EmulatorThread,
                                                     custom: kubernetes.client.CustomObjectsApi) -> None:
    rv = custom.list_namespaced_custom_object(GROUP, VERSION, "default", PLURAL)["metadata"]["resourceVersion"]
    results: list[list[str]] = []
    lock = threading.Lock()

    def reader() -> None:
        names = []
        for event in stream(emu, f"{BASE}/{PLURAL}?watch=1&resourceVersion={rv}&timeoutSeconds=5"):
            names.append(event["object"]["metadata"]["name"])
            if len(names) == 10:
                break
        with lock:
            results.append(names)

    readers = [threading.Thread(target=reader) for _ in range(20)]
    for thread in readers:
        thread.start()
    wait_for(lambda: emu.call(lambda: emu.emulator.store.watch_count) == 20, what="20 open watches")
    for index in range(10):
        custom.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, gadget(f"g{index}"))
    for thread in readers:
        thread.join(10)
    assert results == [[f"g{i}" for i in range(10)]] * 20


def test_going_offline_ends_watches_and_online_serves_the_same_objects(
        emu: EmulatorThread, custom: kubernetes.client.CustomObjectsApi) -> None:
    custom.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, gadget("a"))
    ended = threading.Event()

    def reader() -> None:
        try:
            for _ in stream(emu, f"{BASE}/{PLURAL}?watch=1", timeout=30):
                pass
        except requests.RequestException:
            pass
        ended.set()

    threading.Thread(target=reader, daemon=True).start()
    wait_for(lambda: emu.call(lambda: emu.emulator.store.watch_count) == 1, what="the watch to open")
    emu.run(emu.emulator.go_offline())
    assert ended.wait(10)
    with pytest.raises(requests.ConnectionError):
        requests.get(emu.url + "/version", timeout=5)
    emu.run(emu.emulator.go_online())
    client = make_api_client(emu.url)
    names = kubernetes.client.CustomObjectsApi(client).list_namespaced_custom_object(GROUP, VERSION, "default", PLURAL)
    assert [o["metadata"]["name"] for o in names["items"]] == ["a"]
    client.close()

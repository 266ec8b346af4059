"""kopf 1.45 runs unchanged against the emulator: discovery, watch-streams, patches, finalizers, events."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import kopf
import kubernetes
import pytest
from kubernetes.client import ApiException

from tests.conftest import wait_for
from tests.emulator.conftest import GROUP, PLURAL, VERSION, EmulatorThread, gadget


class KopfThread:
    """An operator with a create and a delete handler for gadgets, on its own thread and loop."""

    def __init__(self, url: str) -> None:
        self.registry = kopf.OperatorRegistry()
        self.stop_flag = threading.Event()
        self.ready_flag = threading.Event()
        self.deleted: list[str] = []
        self.seen_events: list[str] = []

        @kopf.on.login(registry=self.registry)
        def login(**_: Any) -> kopf.ConnectionInfo:
            return kopf.ConnectionInfo(server=url, insecure=True, scheme="Bearer", token="emulator-dummy-token")

        @kopf.on.startup(registry=self.registry)
        def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
            settings.watching.server_timeout = 30

        @kopf.on.create(GROUP, VERSION, PLURAL, id="created", registry=self.registry)
        def created(body: kopf.Body, spec: kopf.Spec, patch: kopf.Patch, **_: Any) -> dict[str, Any]:
            patch.status["phase"] = "Handled"
            kopf.info(body, reason="Created", message="gadget created")
            return {"color": spec["color"]}

        @kopf.on.delete(GROUP, VERSION, PLURAL, registry=self.registry)
        def deleted(name: str, **_: Any) -> None:
            self.deleted.append(name)

        @kopf.on.event(GROUP, VERSION, PLURAL, registry=self.registry)
        def event(type: str | None, name: str, **_: Any) -> None:
            self.seen_events.append(f"{type}:{name}")

        self.thread = threading.Thread(target=self._run, name="kopf", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        asyncio.run(kopf.operator(registry=self.registry, standalone=True, clusterwide=True,
                                  stop_flag=self.stop_flag, ready_flag=self.ready_flag))

    def stop(self) -> None:
        self.stop_flag.set()
        self.thread.join(20)


@pytest.fixture
def operator(emu: EmulatorThread) -> Iterator[KopfThread]:
    running = KopfThread(emu.url)
    try:
        assert running.ready_flag.wait(20)
        yield running
    finally:
        running.stop()


def test_kopf_handles_create_patches_status_and_posts_events(
        emu: EmulatorThread, api: kubernetes.client.ApiClient, operator: KopfThread) -> None:
    custom = kubernetes.client.CustomObjectsApi(api)
    custom.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, gadget("a", color="green"))

    def handled() -> dict[str, Any] | None:
        obj: dict[str, Any] = custom.get_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, "a")
        return obj if obj.get("status", {}).get("phase") == "Handled" else None

    obj = wait_for(handled, what="kopf to handle the creation")
    assert obj is not None
    assert obj["status"]["created"] == {"color": "green"}
    assert obj["metadata"]["finalizers"] == ["kopf.zalando.org/KopfFinalizerMarker"]
    assert obj["metadata"]["generation"] == 1  # kopf's writes were metadata and status only
    requests = emu.emulator.requests
    wait_for(lambda: requests[("create", "events")] > 0, what="kopf to post an event")
    assert requests[("patch", "gadgets/status")] > 0 and requests[("watch", "gadgets")] > 0
    events = kubernetes.client.CoreV1Api(api).list_namespaced_event(
        "default", field_selector="involvedObject.name=a").items
    assert [(e.reason, e.message, e.involved_object.uid) for e in events] == [
        ("Created", "gadget created", obj["metadata"]["uid"])]


def test_kopf_delete_handler_runs_then_its_finalizer_goes(
        emu: EmulatorThread, api: kubernetes.client.ApiClient, operator: KopfThread) -> None:
    custom = kubernetes.client.CustomObjectsApi(api)
    custom.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, gadget("b"))
    wait_for(lambda: custom.get_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, "b")
             .get("metadata", {}).get("finalizers"), what="kopf's finalizer")
    custom.delete_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, "b")

    def gone() -> bool:
        try:
            custom.get_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, "b")
        except ApiException as exc:
            return bool(exc.status == 404)
        return False

    wait_for(gone, what="the object to be released by kopf")
    assert operator.deleted == ["b"]
    wait_for(lambda: "DELETED:b" in operator.seen_events, what="kopf to see the DELETED event")

"""The event pipeline in one process: the API emulator, the operator, and libvirt's test:///default driver.

test:///default is real libvirt with an in-memory hypervisor; its state is shared by every connection of
the process, so the test acts on domains "from outside" through a connection of its own.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import libvirt
import pytest

from kube_emulator import KubeEmulator
from libvirt_operator.api.constants import CRD_PATH, GROUP, PLURAL, RETRY_ANNOTATION, VERSION
from libvirt_operator.runtime import Runtime
from libvirt_operator.settings import Settings
from libvirt_operator.testing import OperatorThread
from testbed.hosts import remove_test_domains
from testbed.polling import until
from tests.unit.test_start_errors import NETWORK_INACTIVE, QEMU_DIED

NODE = "unit-node"
STOPPED, STARTED = libvirt.VIR_DOMAIN_EVENT_STOPPED, libvirt.VIR_DOMAIN_EVENT_STARTED


@dataclasses.dataclass
class Env:
    api: KubeEmulator
    operator: OperatorThread
    libvirt: libvirt.virConnect

    @property
    def runtime(self) -> Runtime:
        assert self.operator.runtime is not None
        return self.operator.runtime

    def simulate(self, uid: str, event: int, detail: int) -> None:
        self.operator.call(lambda: self.runtime.conn.simulate_event(uid, event, detail))

    def vm(self, name: str) -> dict[str, Any] | None:
        return self.api.get_object(GROUP, VERSION, PLURAL, "default", name)

    def status(self, name: str) -> dict[str, Any]:
        return dict((self.vm(name) or {}).get("status") or {})

    def status_patches(self) -> int:
        return int(self.api.requests[("patch", f"{PLURAL}/status")])

    async def create(self, name: str, **spec: Any) -> str:
        import aiohttp

        body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "VirtualMachine",
                "metadata": {"name": name, "namespace": "default"},
                "spec": {"nodeName": NODE, "memory": "64Mi", **spec}}
        async with aiohttp.ClientSession() as session:
            url = f"{self.api.url}/apis/{GROUP}/{VERSION}/namespaces/default/{PLURAL}"
            async with session.post(url, json=body) as resp:
                assert resp.status == 201, await resp.text()
                created = await resp.json()
        return str(created["metadata"]["uid"])

    async def patch(self, name: str, body: dict[str, Any]) -> None:
        """A merge patch, as `kubectl patch --type merge` sends it."""
        import aiohttp

        url = f"{self.api.url}/apis/{GROUP}/{VERSION}/namespaces/default/{PLURAL}/{name}"
        async with aiohttp.ClientSession() as session, session.patch(
                url, json=body, headers={"Content-Type": "application/merge-patch+json"}) as resp:
            assert resp.status == 200, await resp.text()

    async def annotate(self, name: str, key: str, value: str) -> None:
        await self.patch(name, {"metadata": {"annotations": {key: value}}})

    def reasons(self, name: str) -> list[str]:
        return [e["reason"] for e in self.api.objects("", "v1", "events")
                if e["involvedObject"].get("name") == name]


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    async with KubeEmulator(crd_paths=[CRD_PATH]) as api:
        kubeconfig = tmp_path / "kubeconfig"
        api.write_kubeconfig(kubeconfig)
        settings = Settings(node_name=NODE, libvirt_uri="test:///default", kubeconfig=str(kubeconfig),
                            image_dir=tmp_path / "images", storage_dir=tmp_path / "disks", stopped_event_delay=0.5,
                            shutdown_timeout=0.5, health_port=0, metrics_port=0, sync_interval=3600)
        operator = OperatorThread(settings)
        operator.start()
        await until(lambda: operator.runtime is not None and operator.runtime.ready,
                    what="the operator to be ready")
        conn = libvirt.open("test:///default")
        try:
            yield Env(api, operator, conn)
        finally:
            await asyncio.to_thread(operator.stop)
            remove_test_domains(conn)
            conn.close()


async def test_a_stopped_then_started_pair_is_a_reboot_no_flap_no_restart(env: Env) -> None:
    uid = await env.create("reboot")
    await until(lambda: env.status("reboot").get("phase") == "Running", what="Running")
    before = env.status("reboot")
    env.simulate(uid, STOPPED, libvirt.VIR_DOMAIN_EVENT_STOPPED_SHUTDOWN)
    env.simulate(uid, STARTED, libvirt.VIR_DOMAIN_EVENT_STARTED_BOOTED)
    await until(lambda: env.status("reboot").get("lastEvent", {}).get("type") == "Started"
                and env.status("reboot").get("lastEvent") != before.get("lastEvent"), what="the STARTED event")
    await env.operator.idle()
    after = env.status("reboot")
    assert after["phase"] == "Running"
    assert after.get("restarts", 0) == before.get("restarts", 0)
    assert "GuestShutdown" not in [e.get("reason") for e in env.api.objects("", "v1", "events")]


async def test_a_held_stopped_event_lands_after_the_delay_and_always_restarts(env: Env) -> None:
    uid = await env.create("crash", runStrategy="Always")
    await until(lambda: env.status("crash").get("phase") == "Running", what="Running")
    env.libvirt.lookupByUUIDString(uid).destroy()  # from outside: STOPPED/DESTROYED
    status = await until(lambda: env.status("crash").get("restarts") == 1 and env.status("crash"),
                         what="a restart by policy")
    assert status["phase"] == "Running"
    assert env.libvirt.lookupByUUIDString(uid).isActive()
    reasons = [e.get("reason") for e in env.api.objects("", "v1", "events")]
    assert "GuestDestroyed" in reasons and "RestartedByPolicy" in reasons


async def test_an_event_burst_for_one_vm_is_coalesced_into_at_most_one_write_per_reconcile(env: Env) -> None:
    uid = await env.create("burst")
    await until(lambda: env.status("burst").get("phase") == "Running", what="Running")
    await env.operator.idle()
    dom = env.libvirt.lookupByUUIDString(uid)
    before = env.status_patches()
    for _ in range(20):
        dom.suspend()
        dom.resume()
    dom.suspend()
    await until(lambda: env.status("burst").get("phase") == "Paused", what="Paused")
    await env.operator.idle()
    writes = env.status_patches() - before
    assert 1 <= writes <= 41  # never more than one per event; coalescing usually makes it a handful
    assert env.status("burst")["lastEvent"]["type"] == "Suspended"


async def test_a_late_watch_event_of_a_vm_moved_to_another_node_does_not_bring_its_guest_back(env: Env) -> None:
    """A move (the hand-over after a live migration) answered before the watch delivered the events before
    it: such an event still names this node, and must not have the reconciler start the guest here again."""
    uid = await env.create("mover")
    await until(lambda: env.status("mover").get("phase") == "Running", what="Running")
    await env.operator.idle()
    before_move = env.vm("mover")
    assert before_move is not None
    await env.patch("mover", {"spec": {"nodeName": "another-node"}})
    await until(lambda: uid not in {d.UUIDString() for d in env.libvirt.listAllDomains()},
                what="the moved VM's domain removed here")
    await until(lambda: env.runtime.records.get(("default", "mover")) is None, what="the record gone")
    env.operator.call(lambda: env.runtime.observe("MODIFIED", before_move))  # the late event
    await env.operator.idle()
    assert env.runtime.records.get(("default", "mover")) is None
    assert uid not in {d.UUIDString() for d in env.libvirt.listAllDomains()}  # no guest started here again


async def test_events_for_domains_the_operator_does_not_own_are_ignored(env: Env) -> None:
    foreign = env.libvirt.lookupByName("test")  # test:///default's own domain: not ours
    before = env.status_patches()
    foreign.suspend()
    foreign.resume()
    await env.operator.idle()
    assert env.status_patches() == before
    assert foreign.isActive()


async def test_halted_stops_a_guest_started_from_outside(env: Env) -> None:
    uid = await env.create("halted", runStrategy="Halted")
    await until(lambda: env.status("halted").get("phase") == "Stopped", what="Stopped")
    env.libvirt.lookupByUUIDString(uid).create()
    await until(lambda: not env.libvirt.lookupByUUIDString(uid).isActive(), what="the guest stopped again")
    await until(lambda: env.status("halted").get("phase") == "Stopped", what="Stopped again")


async def test_creation_to_running_costs_at_most_three_writes(env: Env) -> None:
    env.api.requests.clear()
    await env.create("cheap")
    await until(lambda: env.status("cheap").get("phase") == "Running", what="Running")
    await env.operator.idle()
    writes = sum(n for (verb, resource), n in env.api.requests.items()
                 if verb in ("patch", "update") and resource.startswith(PLURAL))
    assert writes <= 3, env.api.requests


async def test_the_full_sync_costs_one_listing_and_no_api_request_when_nothing_drifted(env: Env) -> None:
    uids = [await env.create(f"sync-{i}") for i in range(5)]
    await until(lambda: all(env.status(f"sync-{i}").get("phase") == "Running" for i in range(5)), what="Running")
    await env.operator.idle()
    calls: list[str] = []
    env.operator.call(lambda: setattr(env.runtime.conn, "on_call", lambda what, ok: calls.append(what)))
    requests_before = sum(env.api.requests.values())
    drifted = await env.operator.run(env.runtime.full_sync)
    assert drifted == 0
    assert calls == ["list domain states"]
    assert sum(env.api.requests.values()) == requests_before

    # A change libvirt reported while nobody listened (a missed event) is caught by the next full sync.
    sinks = list(env.runtime.conn._event_sinks)
    swallowed: list[Any] = []

    def swallow() -> None:
        env.runtime.conn._event_sinks[:] = [swallowed.append]
    env.operator.call(swallow)
    await env.operator.run(lambda: asyncio.sleep(0))
    env.libvirt.lookupByUUIDString(uids[2]).suspend()
    await until(lambda: any(ev.uuid == uids[2] for ev in swallowed), what="the event to be swallowed")
    env.operator.call(lambda: env.runtime.conn._event_sinks.__setitem__(slice(None), sinks))
    assert env.status("sync-2")["phase"] == "Running"
    assert await env.operator.run(env.runtime.full_sync) == 1
    await until(lambda: env.status("sync-2").get("phase") == "Paused", what="the drift corrected")


async def test_a_shutdown_notice_around_the_operators_own_destroy_does_not_hold_the_vm(
        env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    # QEMU reports a destroy as SHUTDOWN (host) then STOPPED. A held SHUTDOWN waits for its STOPPED; with the
    # wait made endless, a SHUTDOWN wrongly held for the operator's own destroy would stall the VM for good.
    monkeypatch.setattr("libvirt_operator.handlers.vm.SHUTDOWN_TO_STOPPED", 3600.0)
    shutdown = libvirt.VIR_DOMAIN_EVENT_SHUTDOWN
    for name, before_destroy in (("notice-first", True), ("notice-after", False)):
        uid = await env.create(name, runStrategy="Always")
        await until(lambda: env.status(name).get("phase") == "Running", what="Running")  # noqa: B023
        await env.operator.idle()
        rt = env.runtime

        async def destroy_with_notice() -> None:
            if before_destroy:  # noqa: B023
                rt.conn.simulate_event(uid, shutdown, libvirt.VIR_DOMAIN_EVENT_SHUTDOWN_HOST)  # noqa: B023
            assert await rt.host.destroy_owned(uid, undefine=False)  # noqa: B023
            if not before_destroy:  # noqa: B023
                rt.conn.simulate_event(uid, shutdown, libvirt.VIR_DOMAIN_EVENT_SHUTDOWN_HOST)  # noqa: B023
        await env.operator.run(destroy_with_notice)
        # Shut off while it should run: restarted by runStrategy Always once nothing holds it.
        status = await until(lambda: env.status(name).get("restarts") == 1 and env.status(name),  # noqa: B023
                             what=f"{name}: the restart by policy")
        assert status["phase"] == "Running"
        assert env.libvirt.lookupByUUIDString(uid).isActive()


async def test_a_spec_change_landing_during_a_pass_is_acted_on_by_the_next_one(env: Env) -> None:
    uid = await env.create("racing")
    await until(lambda: env.status("racing").get("phase") == "Running", what="Running")
    await env.operator.idle()
    rt = env.runtime
    key = ("default", "racing")

    # A pass that acts on generation 1 while the user's pause (generation 2) arrives in the middle of it.
    async def pass_with_a_change_landing_midway() -> None:
        rec = rt.records.get(key)
        assert rec is not None
        original = rt.conn.call

        async def slow_call(what: str, fn: Any) -> Any:
            if what == "domain state" and rec.acting_on is not None and rec.body is rec.acting_on:
                changed = await rt.kube.json_patch_vm("default", "racing", [
                    {"op": "replace", "path": "/spec/paused", "value": True}])
                rt.records.upsert(changed)  # what the watch delivers meanwhile
            return await original(what, fn)
        rt.conn.call = slow_call  # type: ignore[method-assign]
        try:
            await rt.reconciler.reconcile(key)
        finally:
            rt.conn.call = original  # type: ignore[method-assign]
        rt.queue.add(key)  # the watch event of the change, had it come after the pass
    await env.operator.run(pass_with_a_change_landing_midway)
    status = await until(lambda: env.status("racing").get("phase") == "Paused" and env.status("racing"),
                         what="the pause to be applied")
    assert status["observedGeneration"] == env.vm("racing")["metadata"]["generation"]  # type: ignore[index]
    assert env.libvirt.lookupByUUIDString(uid).state()[0] == libvirt.VIR_DOMAIN_PAUSED


class _RefusingStarts:
    """A libvirt connection whose domains refuse to start with an error libvirtd answered (recorded in
    test_start_errors: test:///default has no QEMU to die and no network to be inactive); all else is real."""

    def __init__(self, conn: libvirt.virConnect, error: tuple[object, ...]) -> None:
        self._conn = conn
        self._error = error

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)

    def defineXML(self, xml: str) -> Any:
        return _RefusingDomain(self._conn.defineXML(xml), self._error)

    def lookupByUUIDString(self, uuid: str) -> Any:
        return _RefusingDomain(self._conn.lookupByUUIDString(uuid), self._error)


class _RefusingDomain:
    def __init__(self, dom: libvirt.virDomain, error: tuple[object, ...]) -> None:
        self._dom = dom
        self._error = error

    def __getattr__(self, name: str) -> Any:
        return getattr(self._dom, name)

    def createWithFlags(self, flags: int = 0) -> None:
        exc = libvirt.libvirtError(str(self._error[2]))
        exc.err = self._error  # type: ignore[assignment]
        raise exc


async def _count_libvirt_calls(env: Env, refuse_starts: Callable[[], bool] = lambda: False,
                               error: tuple[object, ...] = QEMU_DIED) -> list[str]:
    """Records the operator's libvirt calls by name from now on; optionally makes starts fail."""
    calls: list[str] = []

    async def install() -> None:
        rt = env.runtime
        original = rt.conn.call

        async def call(what: str, fn: Any) -> Any:
            calls.append(what)
            if refuse_starts() and what in ("define and start", "start"):
                return await original(what, lambda c: fn(_RefusingStarts(c, error)))
            return await original(what, fn)
        rt.conn.call = call  # type: ignore[method-assign]
    await env.operator.run(install)
    return calls


async def test_a_new_vm_is_defined_and_started_in_one_libvirt_call(env: Env) -> None:
    calls = await _count_libvirt_calls(env)
    uid = await env.create("onecall")
    status = await until(lambda: env.status("onecall").get("phase") == "Running" and env.status("onecall"),
                         what="Running")
    await env.operator.idle()
    # One lookup (is a domain already there?) and one call that defines and starts: no separate start,
    # and no ownership check of the domain just defined (passes triggered by our own writes' watch
    # events only look its state up).
    assert calls[:2] == ["domain state", "define and start"]
    assert set(calls[2:]) <= {"domain state"}, calls
    assert status["lastEvent"]["type"] == "Started" and status["startedAt"]
    assert env.libvirt.lookupByUUIDString(uid).state()[0] == libvirt.VIR_DOMAIN_RUNNING


async def test_a_halted_new_vm_is_only_defined(env: Env) -> None:
    calls = await _count_libvirt_calls(env)
    uid = await env.create("halted", runStrategy="Halted")
    await until(lambda: env.status("halted").get("phase") == "Stopped", what="Stopped")
    await env.operator.idle()
    assert "define and start" not in calls and "start" not in calls and "define" in calls
    assert env.libvirt.lookupByUUIDString(uid).state()[0] == libvirt.VIR_DOMAIN_SHUTOFF


async def test_a_refused_first_start_is_recorded_retried_and_not_counted_as_a_restart(env: Env) -> None:
    refusing = [True]
    await _count_libvirt_calls(env, refuse_starts=lambda: refusing[0])
    uid = await env.create("refused", runStrategy="Always")
    status = await until(lambda: env.status("refused").get("reason") == "StartFailed" and env.status("refused"),
                         what="the refused start to be recorded")
    assert status["phase"] == "Starting" and "start" in status["message"]
    assert env.libvirt.lookupByUUIDString(uid).state()[0] == libvirt.VIR_DOMAIN_SHUTOFF  # defined, kept
    refusing[0] = False
    status = await until(lambda: env.status("refused").get("phase") == "Running" and env.status("refused"),
                         limit=60, what="the retried start")
    assert not status.get("restarts") and status["startedAt"]
    assert env.libvirt.lookupByUUIDString(uid).state()[0] == libvirt.VIR_DOMAIN_RUNNING
    reasons = [e.get("reason") for e in env.api.objects("", "v1", "events")]
    assert "RestartedByPolicy" not in reasons


async def test_a_start_refused_for_good_ends_failed_naming_the_field_with_an_event_and_ready_false(
        env: Env) -> None:
    refusing = [True]
    calls = await _count_libvirt_calls(env, refuse_starts=lambda: refusing[0], error=NETWORK_INACTIVE)
    uid = await env.create("nonet", runStrategy="Always", interfaces=[{"name": "nic0", "network": "default"}])
    status = await until(lambda: env.status("nonet").get("phase") == "Failed" and env.status("nonet"),
                         what="Failed")
    await env.operator.idle()
    message = f"spec.interfaces[0].network: network 'default' is not active on node {NODE}"
    assert (status["reason"], status["message"]) == ("StartFailed", message)
    ready = [c for c in status["conditions"] if c["type"] == "Ready"]
    assert [(c["status"], c["reason"], c["message"]) for c in ready] == [("False", "StartFailed", message)]
    events = [e for e in env.api.objects("", "v1", "events") if e["involvedObject"].get("name") == "nonet"]
    assert [(e["type"], e["reason"], e["message"]) for e in events] == [("Warning", "StartFailed", message)]
    assert [c for c in calls if c in ("define and start", "start")] == ["define and start"]  # not retried
    assert env.libvirt.lookupByUUIDString(uid).state()[0] == libvirt.VIR_DOMAIN_SHUTOFF  # defined, kept

    # Once the network is up, the retry annotation starts it: a first start, no restart by policy.
    refusing[0] = False
    await env.annotate("nonet", RETRY_ANNOTATION, "1")
    status = await until(lambda: env.status("nonet").get("phase") == "Running" and env.status("nonet"),
                         what="Running after the retry")
    assert not status.get("restarts")
    assert env.libvirt.lookupByUUIDString(uid).state()[0] == libvirt.VIR_DOMAIN_RUNNING


async def test_a_halted_vm_switched_to_always_is_started_not_counted_as_a_restart(env: Env) -> None:
    uid = await env.create("wake", runStrategy="Halted")
    await until(lambda: env.status("wake").get("phase") == "Stopped", what="Stopped")
    await env.patch("wake", {"spec": {"runStrategy": "Always"}})
    status = await until(lambda: env.status("wake").get("phase") == "Running" and env.status("wake"),
                         what="Running")
    await env.operator.idle()
    assert not env.status("wake").get("restarts") and status["startedAt"]
    assert "RestartedByPolicy" not in env.reasons("wake")
    assert env.libvirt.lookupByUUIDString(uid).state()[0] == libvirt.VIR_DOMAIN_RUNNING


async def test_a_vm_that_failed_before_its_domain_existed_names_no_domain_and_its_retry_redefines_nothing(
        env: Env) -> None:
    uid = await env.create("noimage", disks=[{"name": "root", "image": "later.qcow2"}])
    status = await until(lambda: env.status("noimage").get("phase") == "Failed" and env.status("noimage"),
                         what="Failed")
    assert status["reason"] == "ProvisioningFailed" and "spec.disks[0].image" in status["message"]
    # No domain exists, so none is named (kubectl get -o wide shows no DOMAIN).
    assert not {"domainName", "domainUUID", "powerState"} & status.keys(), status
    with pytest.raises(libvirt.libvirtError):
        env.libvirt.lookupByUUIDString(uid)

    image = env.runtime.storage.image_dir / "later.qcow2"
    made = await asyncio.create_subprocess_exec("qemu-img", "create", "-q", "-f", "qcow2", str(image), "16M")
    assert await made.wait() == 0
    await env.annotate("noimage", RETRY_ANNOTATION, "1")
    status = await until(lambda: env.status("noimage").get("phase") == "Running" and env.status("noimage"),
                         what="Running after the retry")
    await env.operator.idle()
    assert status["domainName"] == "default_noimage" and status["domainUUID"] == uid
    assert "DomainRedefined" not in env.reasons("noimage")  # its domain never went missing: it never was


class _IgnoringAcpi:
    """A libvirt connection whose guests ignore the ACPI power-off (no OS, as the minimal example's)."""

    def __init__(self, conn: libvirt.virConnect) -> None:
        self._conn = conn

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)

    def lookupByUUIDString(self, uuid: str) -> Any:
        return _IgnoringAcpiDomain(self._conn.lookupByUUIDString(uuid))


class _IgnoringAcpiDomain:
    def __init__(self, dom: libvirt.virDomain) -> None:
        self._dom = dom

    def __getattr__(self, name: str) -> Any:
        return getattr(self._dom, name)

    def shutdown(self) -> None:
        """The request reaches no OS: the guest keeps running."""


@pytest.mark.parametrize(("ignores_acpi", "detail"), [(True, "Destroyed"), (False, "Shutdown")])
async def test_the_last_event_of_a_stop_says_whether_the_guest_shut_down_or_was_destroyed(
        env: Env, ignores_acpi: bool, detail: str) -> None:
    uid = await env.create("stopper")
    await until(lambda: env.status("stopper").get("phase") == "Running", what="Running")

    async def install() -> None:
        rt = env.runtime
        original = rt.conn.call

        async def call(what: str, fn: Any) -> Any:
            return await original(what, lambda c: fn(_IgnoringAcpi(c) if ignores_acpi else c))
        rt.conn.call = call  # type: ignore[method-assign]
    await env.operator.run(install)
    await env.patch("stopper", {"spec": {"runStrategy": "Halted"}})
    status = await until(lambda: env.status("stopper").get("phase") == "Stopped" and env.status("stopper"),
                         what="Stopped")
    assert status["lastEvent"]["type"] == "Stopped" and status["lastEvent"]["detail"] == detail
    reason = "Destroyed" if ignores_acpi else "Shutdown"  # libvirt's shut-off reason agrees
    assert status["reason"] == reason
    assert env.libvirt.lookupByUUIDString(uid).state()[0] == libvirt.VIR_DOMAIN_SHUTOFF

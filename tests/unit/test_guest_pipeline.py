"""Guest features through the whole operator (API emulator, test:///default): the cloud-init seed in the
VM's directory, rebuilt on change with RestartRequired, a Secret as its source and the refusals naming the
field, and the graceful stop's grace period and Events."""

from __future__ import annotations

import base64
import dataclasses
import shutil
import subprocess
from pathlib import Path
from typing import Any

import aiohttp
import libvirt
import pytest

from libvirt_operator.api.constants import RESTART_ANNOTATION
from libvirt_operator.hypervisor.connection import AgentEvent
from libvirt_operator.hypervisor.domain_xml import user_mac
from libvirt_operator.testing import OperatorThread
from testbed.polling import until
from tests.unit import test_event_pipeline
from tests.unit.test_event_pipeline import Env, _IgnoringAcpi

env = test_event_pipeline.env  # the fixture: operator, API emulator and test:///default

pytestmark = pytest.mark.skipif(shutil.which("genisoimage") is None or shutil.which("isoinfo") is None,
                                reason="genisoimage/isoinfo not installed")
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB7x user@host"
OTHER_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIC8y laptop"


def _seed(env: Env, uid: str) -> Path:
    return Path(env.runtime.settings.storage_dir) / uid / "cidata.iso"


def _user_data(iso: Path) -> str:
    return subprocess.run(["isoinfo", "-R", "-i", str(iso), "-x", "/user-data"], capture_output=True, text=True,
                          check=True).stdout


def _condition(status: dict[str, Any], type_: str) -> dict[str, Any]:
    return next((c for c in status.get("conditions") or [] if c.get("type") == type_), {})


async def test_the_seed_is_built_attached_and_rebuilt_on_change_with_restart_required(env: Env) -> None:
    uid = await env.create("seeded", cloudInit={"userData": "#cloud-config\nruncmd: [one]\n"},
                           sshAuthorizedKeys=[KEY])
    status = await until(lambda: env.status("seeded").get("phase") == "Running" and env.status("seeded"),
                         what="Running")
    iso = _seed(env, uid)
    assert "runcmd" in _user_data(iso) and KEY in _user_data(iso)
    xml = env.libvirt.lookupByUUIDString(uid).XMLDesc(0)
    assert str(iso) in xml and "device='cdrom'" in xml and "org.qemu.guest_agent.0" in xml
    assert status["consoleLog"] == str(iso.parent / "console.log")
    assert _condition(status, "RestartRequired") == {}

    await env.patch("seeded", {"spec": {"cloudInit": {"userData": "#cloud-config\nruncmd: [two]\n"}}})
    await until(lambda: _condition(env.status("seeded"), "RestartRequired").get("status") == "True",
                what="RestartRequired after a user-data change")
    assert "two" in _user_data(iso)


async def _create_secret(env: Env, name: str, data: dict[str, str]) -> None:
    body = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": "default"},
            "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}}
    async with aiohttp.ClientSession() as session, session.post(
            f"{env.api.url}/api/v1/namespaces/default/secrets", json=body) as resp:
        assert resp.status == 201, await resp.text()


async def test_a_secret_supplies_the_user_data_and_a_missing_one_fails_naming_the_field(env: Env) -> None:
    await env.create("nosecret", cloudInit={"secretRef": {"name": "absent"}})
    status = await until(lambda: env.status("nosecret").get("phase") == "Failed" and env.status("nosecret"),
                         what="Failed")
    assert status["message"].startswith("spec.cloudInit.secretRef.name: Secret 'absent' not found"), status

    await _create_secret(env, "seed", {"userdata": "#cloud-config\nruncmd: [from-secret]\n"})
    await _create_secret(env, "keys", {"laptop": OTHER_KEY + "\n"})
    uid = await env.create("fromsecret", cloudInit={"secretRef": {"name": "seed"}}, sshAuthorizedKeys=[KEY],
                           sshAuthorizedKeysSecretRef={"name": "keys"})
    await until(lambda: env.status("fromsecret").get("phase") == "Running", what="Running")
    text = _user_data(_seed(env, uid))
    assert "from-secret" in text and KEY in text and OTHER_KEY in text
    await env.create("nokeys", sshAuthorizedKeysSecretRef={"name": "absent-keys"})
    status = await until(lambda: env.status("nokeys").get("phase") == "Failed" and env.status("nokeys"),
                         what="Failed")
    assert status["message"].startswith("spec.sshAuthorizedKeysSecretRef.name: Secret 'absent-keys' not found")


async def test_keys_that_cannot_join_the_user_data_fail_naming_the_field(env: Env) -> None:
    await env.create("script", cloudInit={"userData": "#!/bin/sh\necho hi\n"}, sshAuthorizedKeys=[KEY])
    status = await until(lambda: env.status("script").get("phase") == "Failed" and env.status("script"),
                         what="Failed")
    assert status["message"].startswith("spec.sshAuthorizedKeys: can only be merged"), status


async def test_a_stop_posts_its_way_and_outcome_and_the_vms_grace_period_bounds_it(env: Env) -> None:
    await env.create("graceful")
    await until(lambda: env.status("graceful").get("phase") == "Running", what="Running")
    await env.patch("graceful", {"spec": {"runStrategy": "Halted"}})
    await until(lambda: env.status("graceful").get("phase") == "Stopped", what="Stopped")
    await until(lambda: {"ShuttingDown", "GuestStopped"} <= set(env.reasons("graceful")), what="stop Events")
    assert "GuestDestroyed" not in env.reasons("graceful")

    # A guest that ignores ACPI is destroyed after its own grace period (the operator's is 0.5 s here).
    uid = await env.create("stubborn", terminationGracePeriodSeconds=2)
    await until(lambda: env.status("stubborn").get("phase") == "Running", what="Running")

    async def install() -> None:
        rt = env.runtime
        original = rt.conn.call

        async def call(what: str, fn: Any) -> Any:
            return await original(what, lambda c: fn(_IgnoringAcpi(c)))
        rt.conn.call = call  # type: ignore[method-assign]
    await env.operator.run(install)
    await env.patch("stubborn", {"spec": {"runStrategy": "Halted"}})
    await until(lambda: env.status("stubborn").get("phase") == "Stopped", what="Stopped")
    assert env.libvirt.lookupByUUIDString(uid).state()[0] == libvirt.VIR_DOMAIN_SHUTOFF

    def destroyed() -> list[str]:
        return [e["message"] for e in env.api.objects("", "v1", "events")
                if e["involvedObject"].get("name") == "stubborn" and e["reason"] == "GuestDestroyed"]
    messages = await until(destroyed, what="the GuestDestroyed Event")  # posted beside the status write
    assert "grace period of 2s" in messages[0], messages


async def test_an_agent_event_makes_the_operator_read_the_guest_and_the_stop_clears_it(env: Env) -> None:
    uid = await env.create("talker", interfaces=[{"name": "ssh", "user": {"portForwards": [
        {"port": 22, "hostPort": 2222}]}}])
    await until(lambda: env.status("talker").get("phase") == "Running", what="Running")
    # A start reads nothing (the agent is not up yet); its connection event does.
    assert _condition(env.status("talker"), "AgentConnected") == {}
    env.operator.call(lambda: env.runtime.conn._deliver_agent(AgentEvent(uid, True)))
    status = await until(lambda: _condition(env.status("talker"), "AgentConnected") and env.status("talker"),
                         what="AgentConnected after the agent event")
    # test:///default has no agent channel state: no agent, and the MAC the operator gave the NIC.
    assert _condition(status, "AgentConnected")["status"] == "False"
    assert _condition(status, "AgentConnected")["reason"] == "AgentNotConnected"
    assert status["interfaces"] == [{"name": "ssh", "macAddress": user_mac(uid, "ssh")}]
    await env.patch("talker", {"spec": {"runStrategy": "Halted"}})
    status = await until(lambda: env.status("talker").get("phase") == "Stopped" and env.status("talker"),
                         what="Stopped")
    assert "interfaces" not in status and _condition(status, "AgentConnected")["reason"] == "GuestNotRunning"


async def test_the_restart_annotation_reboots_a_running_guest_once_per_value(env: Env) -> None:
    await env.create("rebooter")
    await until(lambda: env.status("rebooter").get("phase") == "Running", what="Running")
    await env.annotate("rebooter", RESTART_ANNOTATION, "1")
    await until(lambda: env.status("rebooter").get("observedRestart") == "1", what="observedRestart 1")
    await until(lambda: "Rebooting" in env.reasons("rebooter"), what="the Rebooting Event")
    status = env.status("rebooter")
    assert status["phase"] == "Running" and not status.get("restarts")
    # The same value again is no new request; a stopped guest's request is recorded, not acted on.
    await env.patch("rebooter", {"spec": {"runStrategy": "Halted"}})
    await until(lambda: env.status("rebooter").get("phase") == "Stopped", what="Stopped")
    await env.annotate("rebooter", RESTART_ANNOTATION, "2")
    await until(lambda: env.status("rebooter").get("observedRestart") == "2", what="observedRestart 2")
    await until(lambda: "RestartSkipped" in env.reasons("rebooter"), what="the RestartSkipped Event")
    assert env.reasons("rebooter").count("Rebooting") == 1


async def test_once_runs_until_the_guest_stops_and_then_stays_stopped(env: Env) -> None:
    uid = await env.create("once", runStrategy="Once")
    await until(lambda: env.status("once").get("phase") == "Running", what="Running")
    env.libvirt.lookupByUUIDString(uid).shutdown()  # the guest powers off (test:// obeys at once)
    await until(lambda: env.status("once").get("phase") == "Stopped", what="Stopped")
    await env.patch("once", {"spec": {"memory": "96Mi"}})  # a spec change does not run it again
    await until(lambda: env.status("once").get("observedGeneration") == 2, what="the change observed")
    assert env.status("once")["phase"] == "Stopped" and not env.status("once").get("restarts")
    assert env.libvirt.lookupByUUIDString(uid).state()[0] == libvirt.VIR_DOMAIN_SHUTOFF


async def test_a_restarted_operator_writes_nothing_for_running_vms_whose_agent_never_connected(env: Env) -> None:
    """The first instance writes no AgentConnected for a guest whose agent never connected (a start defers
    the guest's data to the agent's own connection); a restarted one, which reads every guest once, must not
    add it either: that was one status write per VM of the node at every restart (1000 in the benchmark)."""
    await env.create("quiet")
    await until(lambda: env.status("quiet").get("phase") == "Running", what="Running")
    await env.operator.idle()
    conditions = {c["type"] for c in env.status("quiet")["conditions"]}
    assert "AgentConnected" not in conditions
    settings = env.operator.settings
    env.operator.stop()
    before = env.status_patches()
    second = OperatorThread(dataclasses.replace(settings, lease=False))  # no wait for the first one's Lease
    second.start()
    try:
        await until(lambda: second.runtime is not None and second.runtime.ready, what="the second instance ready")
        await second.idle()
        assert env.status_patches() == before
        assert {c["type"] for c in env.status("quiet")["conditions"]} == conditions
    finally:
        second.stop()

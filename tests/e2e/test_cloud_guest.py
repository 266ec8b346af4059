"""One real Debian guest (hack/guest-image.sh) through the operator, under the domain type --domain-type auto
picks, on the real API server: everything a user does with kubectl, everything checked from outside.

One VirtualMachine: direct kernel boot from the image directory, cloud-init user-data that writes a file,
an SSH key in spec.sshAuthorizedKeys, a user-mode interface forwarding a port of 127.0.0.1 to the guest's
SSH. Checked: SSH login with that key reads the file (so the seed reached cloud-init and the key was
merged), status.interfaces / status.guestOS / AgentConnected from the guest agent, the serial console's log
on the node holds the kernel's boot lines, the Node says which domain type and why, the restart annotation
reboots the guest once (a new boot id, no restart counted, no stop), runStrategy Halted stops the guest
cleanly (guest agent, not the grace period's destroy) with Events saying so, a reboot inside the guest is
no stop (not even for runStrategy Once), and a poweroff inside it is Once's end. After the first boot the
guest is read (its boot id) and driven (reboot, poweroff) through its agent's guest-exec, which answers about
a minute before cloud-init lets SSH in under TCG. The times (boot to SSH, reboot, clean shutdown) are printed.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import os
import secrets
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import libvirt
import pytest

from libvirt_operator.api.constants import RESTART_ANNOTATION
from testbed.guest_agent import GuestExecError, agent_of, boot_clock, guest_exec
from testbed.guest_ssh import guest_cat
from testbed.terminal import on_terminal
from tests.conftest import REPO, report_line
from tests.e2e.harness import OPERATOR, Cluster, Host, free_port, poll, unique, vm_manifest

SCRIPT = REPO / "hack" / "guest-image.sh"
PROOF_FILE = "/var/lib/lvo-cloud-guest-proof"
BOOT_TIMEOUT = 600.0  # TCG: about 35 s on an idle machine, minutes beside other suites' guests
SHUTDOWN_GRACE = 120  # spec.terminationGracePeriodSeconds: a clean stop must finish well before it
pytestmark = pytest.mark.timeout(1500 + BOOT_TIMEOUT + 2 * SHUTDOWN_GRACE)


def _images(images: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("hack/guest-image.sh builds as root")
    out = subprocess.run(["bash", str(SCRIPT), str(images)], capture_output=True, text=True, timeout=1500)
    assert out.returncode == 0, f"hack/guest-image.sh failed:\n{out.stderr[-3000:]}"


def _console_prompt(name: str, timeout: float = 60.0) -> bytes:
    """What `libvirt-operator console` shows on a terminal after a carriage return (until a login prompt
    or the deadline); then it is left with its escape character."""
    return on_terminal([*OPERATOR, "console", f"default/{name}"], b"login:", timeout=timeout, nudge=b"\r")


def _crd_serves_guest_fields(cluster: Cluster) -> None:
    """The shared control plane's CRD is this checkout's (the session applied it); another checkout's test
    session applying an older one prunes these fields, which would fail this test for no fault of its own."""
    crd = json.loads(cluster.kubectl("get", "crd", "virtualmachines.virt.libvirt-operator.dev", "-o", "json"))
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
    missing = {"cloudInit", "sshAuthorizedKeys", "boot"} - set(spec)
    assert not missing, (f"the served CRD lacks {sorted(missing)}: another test session replaced it with an older "
                         "one; run again when it is done")


def _condition(status: dict[str, Any], type_: str) -> dict[str, Any]:
    return next((c for c in status.get("conditions") or [] if c.get("type") == type_), {})


def test_a_real_guest_boots_takes_cloud_init_and_a_key_reports_itself_and_stops_cleanly(
        cluster: Cluster, host: Host, make_operator: Any, dirs: tuple[Path, Path], node_name: str,
        pytestconfig: pytest.Config) -> None:
    storage, images = dirs
    _images(images)
    node = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": node_name}}
    cluster.kubectl("create", "-f", "-", input_text=json.dumps(node))
    try:
        _boot_log_in_and_stop(cluster, host, make_operator, storage, images, node_name, pytestconfig)
    finally:
        cluster.kubectl("delete", "node", node_name, "--ignore-not-found")


def _agent_boot_id(host: Host, uid: str) -> str | None:
    """The id of the guest's current boot, read inside it through its agent, which answers early in userspace
    (SSH waits for cloud-init, a minute more under TCG); None while the domain or its agent is not there."""
    dom = host.domain(uid)
    try:
        return boot_clock(agent_of(dom)).boot_id if dom is not None else None
    except (libvirt.libvirtError, GuestExecError):
        return None


def _in_guest(host: Host, uid: str, *command: str) -> None:
    """``command`` started in the guest through its agent; whether its exit is reported does not matter (a
    reboot or poweroff may take the agent down first)."""
    dom = host.domain(uid)
    assert dom is not None
    try:
        guest_exec(agent_of(dom), command[0], command[1:], timeout=10)
    except (libvirt.libvirtError, GuestExecError):
        pass


def _boot_log_in_and_stop(cluster: Cluster, host: Host, make_operator: Any, storage: Path, images: Path,
                          node: str, pytestconfig: pytest.Config) -> None:
    key = storage.parent / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "lvo-e2e", "-f", str(key)], check=True,
                   timeout=30)
    public_key = (storage.parent / "id_ed25519.pub").read_text().strip()
    token = secrets.token_hex(16)
    port = free_port()
    name = unique("cloud")
    user_data = "#cloud-config\n" + json.dumps({
        "write_files": [{"path": PROOF_FILE, "content": token + "\n", "permissions": "0644"}]}) + "\n"
    cmdline = (images / "debian-cloud.cmdline").read_text().strip()
    manifest = vm_manifest(
        name, node, memory="512Mi",
        disks=[{"name": "root", "image": "debian-cloud.qcow2"}],
        boot={"kernel": "debian-cloud.vmlinuz", "initrd": "debian-cloud.initrd", "cmdline": cmdline},
        interfaces=[{"name": "net0", "user": {"portForwards": [{"port": 22, "hostPort": port}]}}],
        cloudInit={"userData": user_data},
        sshAuthorizedKeys=[public_key],
        terminationGracePeriodSeconds=SHUTDOWN_GRACE,
    )
    proc = make_operator(node, "--domain-type", "auto")
    _crd_serves_guest_fields(cluster)

    applied = time.monotonic()
    cluster.apply(manifest)
    status = cluster.wait_phase(name, "Running", timeout=120)
    console = Path(status["consoleLog"])
    assert console.parent.parent == storage.resolve(), console
    try:
        seen = poll(lambda: guest_cat(key, port, PROOF_FILE), timeout=BOOT_TIMEOUT, interval=1.0,
                    what=f"ssh -p {port} debian@127.0.0.1 cat {PROOF_FILE}")
    except AssertionError as exc:
        tail = console.read_text(errors="replace")[-3000:] if console.exists() else "(no console log)"
        raise AssertionError(f"{exc}\nstatus: {cluster.status(name)}\nconsole:\n{tail}\n{proc.tail(80)}") from None
    to_ssh = time.monotonic() - applied
    assert seen == token, f"{PROOF_FILE} says {seen!r}; the user-data wrote {token!r}"

    # The Node says which domain type the operator chose and why.
    annotations = json.loads(cluster.kubectl("get", "node", node, "-o", "json"))["metadata"]["annotations"]
    domain_type = annotations["virt.libvirt-operator.dev/domain-type"]
    assert domain_type in ("kvm", "qemu") and annotations["virt.libvirt-operator.dev/domain-type-reason"]

    # The guest agent reports the guest: addresses, OS, AgentConnected.
    def reported() -> dict[str, Any] | None:
        status = cluster.status(name)
        nics = status.get("interfaces") or []
        if _condition(status, "AgentConnected").get("status") == "True" and status.get("guestOS") \
                and nics and nics[0].get("ipAddresses"):
            return status
        return None
    status = poll(reported, timeout=180, interval=1.0, what="interfaces, guestOS and AgentConnected in the status")
    assert status["interfaces"][0]["name"] == "net0" and status["interfaces"][0]["macAddress"]
    assert "10.0.2.15" in status["interfaces"][0]["ipAddresses"], status["interfaces"]  # QEMU's user-mode DHCP
    assert status["guestOS"]["id"] == "debian" and status["guestOS"]["hostname"] == name, status["guestOS"]
    assert status["guestOS"]["kernelRelease"]

    boot_log = console.read_text(errors="replace")
    assert "Linux version" in boot_log, "the serial console's log has no kernel boot line"
    printed = subprocess.run([*OPERATOR, "console", "--log", f"default/{name}"], capture_output=True, timeout=60)
    assert printed.returncode == 0 and b"Linux version" in printed.stdout, printed.stderr
    assert b"login:" in _console_prompt(name), "libvirt-operator console showed no login prompt"

    # The restart annotation reboots the guest once, gracefully (a new boot id), as no restart and no stop.
    # From here on the guest is read and driven through its agent: SSH proved what it had to, and every boot
    # not waited for until cloud-init lets SSH in is a minute less of TCG.
    boot_id = guest_cat(key, port, "/proc/sys/kernel/random/boot_id")
    uid = status["domainUUID"]
    assert boot_id and _agent_boot_id(host, uid) == boot_id
    cluster.kubectl("annotate", "lvm", name, f"{RESTART_ANNOTATION}=1")
    asked = time.monotonic()
    rebooted = poll(lambda: (b := _agent_boot_id(host, uid)) and b != boot_id and b,
                    timeout=BOOT_TIMEOUT, interval=1.0, what="the guest to come back with a new boot id")
    to_reboot = time.monotonic() - asked
    assert rebooted != boot_id
    status = cluster.status(name)
    assert status["phase"] == "Running" and not status.get("restarts"), status
    assert status.get("observedRestart") == "1"
    assert status.get("lastEvent", {}).get("type") != "Stopped", status.get("lastEvent")
    reasons = cluster.event_reasons(name)
    assert reasons.count("Rebooting") == 1 and "GuestReset" not in reasons, reasons
    poll(lambda: _condition(cluster.status(name), "AgentConnected").get("status") == "True", timeout=180,
         interval=1.0, what="the agent back after the reboot")

    cluster.patch_spec(name, {"runStrategy": "Halted"})
    asked = time.monotonic()
    status = cluster.wait_phase(name, "Stopped", timeout=SHUTDOWN_GRACE + 60)
    to_off = time.monotonic() - asked
    assert status["lastEvent"]["detail"] == "Shutdown", status["lastEvent"]
    reasons = cluster.event_reasons(name)
    assert "ShuttingDown" in reasons and "GuestStopped" in reasons and "GuestDestroyed" not in reasons, reasons
    stopped = [e["message"] for e in cluster.events_for(name) if e["reason"] == "GuestStopped"]
    assert any("guest agent" in m for m in stopped), stopped
    status = poll(lambda: (s := cluster.status(name)) and not s.get("guestOS") and s, timeout=30,
                  what="guestOS cleared once the guest is off")
    assert _condition(status, "AgentConnected").get("status") == "False"

    # Once: started again (Always), switched to Once while it runs, then powered off from inside: it stays
    # Stopped, also through a later pass (a spec change), with no restart counted.
    cluster.patch_spec(name, {"runStrategy": "Always"})
    asked = time.monotonic()
    uid = cluster.wait_phase(name, "Running", timeout=120)["domainUUID"]
    poll(lambda: _agent_boot_id(host, uid), timeout=BOOT_TIMEOUT, interval=1.0,
         what="the guest's agent after the start")
    to_agent_again = time.monotonic() - asked
    cluster.patch_spec(name, {"runStrategy": "Once"})
    poll(lambda: cluster.status(name).get("observedGeneration") == cluster.get(name)["metadata"]["generation"],
         timeout=30, what="runStrategy Once observed")

    # A reboot inside the guest is folded by the reboot rule: no restart counted, no phase flap, and Once
    # does not take it for the guest's end.
    boot_id = _agent_boot_id(host, uid)
    assert boot_id
    restarts_before = cluster.status(name).get("restarts") or 0
    stops_before = cluster.event_reasons(name).count("GuestStopped")
    _in_guest(host, uid, "/bin/systemctl", "reboot")
    asked = time.monotonic()
    phases: set[str] = set()

    def back_with_new_boot_id() -> str | None:
        phases.add(str(cluster.status(name).get("phase")))
        found = _agent_boot_id(host, uid)
        return found if found and found != boot_id else None
    poll(back_with_new_boot_id, timeout=BOOT_TIMEOUT, interval=1.0, what="the guest back from its own reboot")
    to_guest_reboot = time.monotonic() - asked
    status = cluster.status(name)
    assert phases == {"Running"} and status["phase"] == "Running", (phases, status)
    assert (status.get("restarts") or 0) == restarts_before, status
    reasons = cluster.event_reasons(name)
    assert reasons.count("GuestStopped") == stops_before and "RestartedByPolicy" not in reasons, reasons

    _in_guest(host, uid, "/bin/systemctl", "poweroff")
    status = cluster.wait_phase(name, "Stopped", timeout=SHUTDOWN_GRACE)
    cluster.patch_spec(name, {"cpu": {"cores": 2}})
    generation = cluster.get(name)["metadata"]["generation"]  # type: ignore[index]
    status = poll(lambda: (s := cluster.status(name)) and s.get("observedGeneration") == generation and s,
                  timeout=60, what="the spec change observed")
    assert status["phase"] == "Stopped" and not status.get("restarts"), status
    assert cluster.event_reasons(name).count("RestartedByPolicy") == 0
    report_line(pytestconfig, f"cloud guest ({domain_type}): apply to SSH {to_ssh:.1f} s, restart annotation "
                f"to the agent again {to_reboot:.1f} s, runStrategy Halted to Stopped {to_off:.1f} s ({stopped[-1]}), "
                f"Always to the agent {to_agent_again:.1f} s, reboot inside the guest to the agent "
                f"{to_guest_reboot:.1f} s")


def test_url_images_and_secret_user_data_through_the_real_api_without_booting(
        cluster: Cluster, make_operator: Any, dirs: tuple[Path, Path], node_name: str) -> None:
    """No guest boots (runStrategy Halted: defined only). A URL image from a local HTTP server on 127.0.0.1:
    the right checksum gives a domain whose disk is an overlay on the downloaded base, a wrong one Failed
    naming spec.disks[0].sha256. A secretRef while the chart grants no Secret access (its default, which the
    e2e identity has): Failed naming the field and the chart value, so the RBAC is as narrow as it says."""
    storage, images = dirs
    _images(images)
    base = images / "debian-cloud.qcow2"
    sha = hashlib.sha256(base.read_bytes()).hexdigest()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(images))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}/debian-cloud.qcow2"
    try:
        make_operator(node_name)
        _crd_serves_guest_fields(cluster)
        good, bad, secret = unique("url-good"), unique("url-bad"), unique("secret")
        cluster.apply(vm_manifest(good, node_name, run_strategy="Halted",
                                  disks=[{"name": "root", "image": url, "sha256": sha}]))
        cluster.apply(vm_manifest(bad, node_name, run_strategy="Halted",
                                  disks=[{"name": "root", "image": url, "sha256": "0" * 64}]))
        cluster.apply(vm_manifest(secret, node_name, run_strategy="Halted",
                                  cloudInit={"secretRef": {"name": "some-user-data"}}))
        cluster.wait_phase(good, "Stopped", timeout=300)
        cached = storage / ".images" / sha
        assert cached.read_bytes() == base.read_bytes()
        disk = next(storage.glob("*/root.qcow2"))
        info = json.loads(subprocess.run(["qemu-img", "info", "-U", "--output=json", str(disk)], capture_output=True,
                                         text=True, check=True, timeout=60).stdout)
        assert info["backing-filename"] == str(cached.resolve())
        assert "ImageImported" in cluster.event_reasons(good)
        status = cluster.wait_phase(bad, "Failed", timeout=300)
        assert status["message"].startswith("spec.disks[0].sha256: the image downloaded from"), status["message"]
        status = cluster.wait_phase(secret, "Failed", timeout=60)
        if cluster.api.kind == "real":  # RBAC: the chart's default grants no Secret
            assert status["message"].startswith("spec.cloudInit.secretRef.name: the operator may not read Secret")
            assert "cloudInit.secretNamespaces" in status["message"]
        else:  # the emulator has no RBAC: the Secret is simply not there
            assert status["message"].startswith("spec.cloudInit.secretRef.name: Secret 'some-user-data' not found")
    finally:
        httpd.shutdown()
        httpd.server_close()

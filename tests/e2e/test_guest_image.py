"""The real Debian guest of hack/guest-image.sh boots, under TCG, straight from libvirt (no operator).

One domain of the test's own (named ``lvo-guest-image-*``, never another one), on machine pc with direct
kernel boot from the script's files, the image under a qcow2 overlay, a NoCloud seed on IDE, QEMU
user-mode networking with SSH forwarded from 127.0.0.1 only, the serial console into a file, and the
guest agent's channel. Checked: cloud-init applied the seed (a file it wrote, read over SSH with the key it
authorized), the agent answers, ACPI power-off turns the domain off. The times go to docs/guest-image.md.

That boot runs only with LVO_GUEST_IMAGE_BOOT=1: tests/e2e/test_cloud_guest.py boots the same image through
the operator and checks the same (SSH with the seed's key reading the seed's file, the agent, a clean
stop), and a TCG boot costs CI minutes. Run it when that test fails, to tell the image from the operator.
"""

from __future__ import annotations

import filecmp
import json
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import escape, quoteattr

import pytest

from testbed.guest_ssh import guest_cat, guest_ssh
from testbed.hosts import libvirtd_answers
from tests.conftest import REPO, wait_for

URI = "qemu:///system"
SCRIPT = REPO / "hack" / "guest-image.sh"
FILES = ("debian-cloud.qcow2", "debian-cloud.vmlinuz", "debian-cloud.initrd", "debian-cloud.cmdline")
PROOF_FILE = "/var/lib/lvo-guest-image-proof"
BUILD_TIMEOUT = 1500.0  # a cold build: apt-get install, mmdebstrap (1-2 min), mke2fs, qemu-img
SSH_TIMEOUT = 600.0  # TCG: about 35 s on an idle machine, 65-210 s seen beside other suites' guests
AGENT_TIMEOUT = 120.0
SHUTDOWN_TIMEOUT = 120.0

pytestmark = pytest.mark.timeout(BUILD_TIMEOUT + SSH_TIMEOUT + AGENT_TIMEOUT + SHUTDOWN_TIMEOUT + 120)


def _unavailable(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


@dataclass(frozen=True)
class Built:
    images: Path  # the directory the script wrote into
    seconds: float  # how long the script took (a build, or a copy from the cache)


def _run_script(target: Path) -> Built:
    started = time.monotonic()
    out = subprocess.run(["bash", str(SCRIPT), str(target)], capture_output=True, text=True,
                         timeout=BUILD_TIMEOUT)
    seconds = time.monotonic() - started
    assert out.returncode == 0, f"hack/guest-image.sh failed (exit {out.returncode}):\n{out.stderr[-4000:]}"
    assert out.stdout.strip().splitlines()[-1] == str(target), out.stdout
    for name in FILES:
        assert (target / name).stat().st_size > 0, f"{name} missing or empty in {target}"
    return Built(target, seconds)


@pytest.fixture(scope="module")
def workdir() -> Iterator[Path]:
    # QEMU runs as libvirt-qemu: everything it opens must be reachable by it (pytest's tmp_path is not).
    base = Path(tempfile.mkdtemp(prefix="lvo-guest-image-", dir="/var/tmp"))
    base.chmod(0o755)
    yield base
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def built(workdir: Path) -> Built:
    if os.geteuid() != 0:
        _unavailable("hack/guest-image.sh builds as root (mmdebstrap) and the guest runs on qemu:///system")
    if not libvirtd_answers(URI):
        _unavailable(f"libvirtd does not answer at {URI} (run hack/setup.sh)")
    images = workdir / "images"
    images.mkdir()
    return _run_script(images)


def _virsh(*args: str, timeout: float = 60.0, check: bool = True) -> str:
    out = subprocess.run(["virsh", "-c", URI, *args], capture_output=True, text=True, timeout=timeout)
    if check and out.returncode != 0:
        raise AssertionError(f"virsh {' '.join(args)}: {out.stderr.strip() or out.stdout.strip()}")
    return out.stdout.strip()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _seed_iso(directory: Path, name: str, public_key: str, token: str) -> Path:
    user_data = "#cloud-config\n" + json.dumps({
        "ssh_authorized_keys": [public_key],
        "write_files": [{"path": PROOF_FILE, "content": token + "\n", "permissions": "0644"}],
    }, indent=1) + "\n"
    (directory / "user-data").write_text(user_data)
    (directory / "meta-data").write_text(f"instance-id: {name}\nlocal-hostname: {name}\n")
    iso = directory / "seed.iso"
    subprocess.run(["genisoimage", "-quiet", "-output", str(iso), "-volid", "cidata", "-joliet", "-rock",
                    str(directory / "user-data"), str(directory / "meta-data")], check=True, timeout=60)
    return iso


def _domain_xml(name: str, images: Path, overlay: Path, seed: Path, console: Path, ssh_port: int) -> str:
    cmdline = (images / "debian-cloud.cmdline").read_text().strip()

    def path(p: Path) -> str:
        return quoteattr(str(p))

    # libvirt 9.0's <interface type='user'> forwards ports only with passt, not installed here: QEMU's own
    # user-mode network (slirp) with hostfwd on 127.0.0.1, passed through <qemu:commandline>; its NIC in a
    # PCI slot libvirt never picks for its own devices (it fills them from slot 2 up). restrict=on: the
    # guest gets DHCP and the forwarded port, nothing of it leaves QEMU (no NAT to the host or beyond).
    return f"""<domain type='qemu' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>
  <name>{escape(name)}</name>
  <memory unit='MiB'>512</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>{escape(str(images / "debian-cloud.vmlinuz"))}</kernel>
    <initrd>{escape(str(images / "debian-cloud.initrd"))}</initrd>
    <cmdline>{escape(cmdline)}</cmdline>
  </os>
  <features><acpi/></features>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file={path(overlay)}/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <disk type='file' device='cdrom'>
      <driver name='qemu' type='raw'/>
      <source file={path(seed)}/>
      <target dev='hdc' bus='ide'/>
      <readonly/>
    </disk>
    <serial type='file'>
      <source path={path(console)}/>
      <target port='0'/>
    </serial>
    <channel type='unix'>
      <target type='virtio' name='org.qemu.guest_agent.0'/>
    </channel>
    <video><model type='none'/></video>
    <memballoon model='none'/>
  </devices>
  <qemu:commandline>
    <qemu:arg value='-netdev'/>
    <qemu:arg value='user,id=lvonet0,restrict=on,hostfwd=tcp:127.0.0.1:{ssh_port}-:22'/>
    <qemu:arg value='-device'/>
    <qemu:arg value='virtio-net-pci,netdev=lvonet0,bus=pci.0,addr=0x1e'/>
  </qemu:commandline>
</domain>
"""


def _state(name: str) -> str:
    return _virsh("domstate", name, check=False)


def _remove(name: str) -> None:
    # Other suites restart libvirtd: wait for it rather than leave the domain behind.
    wait_for(lambda: libvirtd_answers(URI), timeout=60, interval=0.5, what=f"libvirtd at {URI}")
    if _virsh("dominfo", name, check=False):
        if _state(name) != "shut off":
            _virsh("destroy", name, check=False)
        _virsh("undefine", name, check=False)


@pytest.mark.skipif(os.environ.get("LVO_GUEST_IMAGE_BOOT") != "1",
                    reason="LVO_GUEST_IMAGE_BOOT=1 boots the image without the operator (test_cloud_guest.py boots "
                           "it through the operator)")
def test_guest_image_boots_applies_cloud_init_answers_agent_and_powers_off_on_acpi(
        built: Built, workdir: Path) -> None:
    name = f"lvo-guest-image-{secrets.token_hex(3)}"
    run = workdir / name
    run.mkdir()
    run.chmod(0o755)
    key = run / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(key)], check=True,
                   timeout=30)
    token = secrets.token_hex(16)
    seed = _seed_iso(run, name, (run / "id_ed25519.pub").read_text().strip(), token)
    overlay = run / "overlay.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(built.images / "debian-cloud.qcow2"),
                    "-F", "qcow2", str(overlay)], check=True, timeout=60)
    console = run / "console.log"
    port = _free_port()
    xml = run / "domain.xml"
    xml.write_text(_domain_xml(name, built.images, overlay, seed, console, port))

    try:
        _virsh("define", str(xml))
        _virsh("start", name)
        started = time.monotonic()
        try:
            seen = wait_for(lambda: guest_cat(key, port, PROOF_FILE), timeout=SSH_TIMEOUT, interval=0.5,
                            what=f"ssh -p {port} debian@127.0.0.1 cat {PROOF_FILE}")
        except AssertionError as exc:
            tail = console.read_text(errors="replace")[-3000:] if console.exists() else "(no console log)"
            raise AssertionError(f"{exc}\nlast of the serial console:\n{tail}") from None
        to_ssh = time.monotonic() - started
        assert seen == token, f"the guest's {PROOF_FILE} says {seen!r}, the seed wrote {token!r}"
        # Both wait in the guest, bounded by the ssh timeout: every cloud-init module went well (resizefs
        # too), no unit failed.
        done = guest_ssh(key, port, "cloud-init status --wait --long; systemctl is-system-running --wait",
                    timeout=SSH_TIMEOUT)
        booted = time.monotonic() - started
        assert "status: done" in done.stdout and done.stdout.strip().endswith("running"), (
            f"cloud-init or systemd in the guest: {done.stdout}{done.stderr}\n"
            + guest_ssh(key, port, "systemctl --failed --no-legend; sudo tail -n 30 /var/log/cloud-init.log").stdout)

        asked_agent = time.monotonic()
        info = json.loads(wait_for(
            lambda: _virsh("qemu-agent-command", name, '{"execute":"guest-info"}', timeout=30),
            timeout=AGENT_TIMEOUT, interval=0.5, what="the guest agent's answer to guest-info"))
        to_agent = time.monotonic() - asked_agent
        agent_version = info["return"]["version"]
        assert any(c["name"] == "guest-shutdown" for c in info["return"]["supported_commands"])

        wait_for(lambda: _virsh("shutdown", name, "--mode", "acpi") is not None, timeout=60, interval=0.5,
                 what=f"virsh shutdown {name} --mode acpi")
        asked = time.monotonic()
        wait_for(lambda: _state(name) == "shut off", timeout=SHUTDOWN_TIMEOUT, interval=0.1,
                 what=f"{name} to power off after an ACPI shutdown request")
        to_off = time.monotonic() - asked

        boot_log = console.read_text(errors="replace")
        assert "Linux version" in boot_log, "the kernel did not write to the serial console"
        assert "reboot: Power down" in boot_log, "the guest did not power itself off"
        print(f"\nguest image: script {built.seconds:.1f} s, boot to SSH {to_ssh:.1f} s, cloud-init done and "
              f"system running {booted:.1f} s, agent {agent_version} answered in {to_agent:.1f} s, "
              f"ACPI shutdown to shut off {to_off:.1f} s")
    finally:
        _remove(name)
    assert not _virsh("dominfo", name, check=False), f"{name} is still defined"


def test_second_run_copies_the_cached_build_in_seconds(built: Built, workdir: Path) -> None:
    again = _run_script(workdir / "again")
    assert again.seconds < 30, f"a cached run took {again.seconds:.1f} s"
    for name in FILES:
        assert filecmp.cmp(again.images / name, built.images / name, shallow=False), name
    print(f"\nguest image: first run {built.seconds:.1f} s, cached run {again.seconds:.1f} s")

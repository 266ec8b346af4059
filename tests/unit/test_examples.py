"""Every example in examples/ is a VirtualMachine the node accepts, and each shows what it says it shows."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from libvirt_operator.api.constants import API_VERSION, KIND
from libvirt_operator.api.spec import VMSpec, parse_spec

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def load(name: str) -> dict[str, Any]:
    with open(EXAMPLES / name) as handle:
        document: dict[str, Any] = yaml.safe_load(handle)
    return document


def spec_of(name: str) -> VMSpec:
    return parse_spec(load(name)["spec"])


@pytest.mark.parametrize("name", sorted(p.name for p in EXAMPLES.glob("*.yaml")))
def test_example_is_a_virtual_machine_the_node_accepts(name: str) -> None:
    document = load(name)
    assert (document["apiVersion"], document["kind"]) == (API_VERSION, KIND)
    assert document["metadata"]["name"]
    spec = parse_spec(document["spec"])
    assert spec.node_name == "dev-node"
    # Small enough for any test machine; the real guest needs what Debian needs.
    assert spec.memory_bytes <= (512 if name == "cloud-vm.yaml" else 64) * 2**20


@pytest.mark.parametrize("name", sorted(p.name for p in EXAMPLES.glob("*.yaml")))
def test_example_file_is_named_after_the_vm_it_creates(name: str) -> None:
    """`kubectl apply -f examples/X.yaml` creates VM X, so `kubectl get lvm X` is what comes next."""
    assert f"{load(name)['metadata']['name']}.yaml" == name


def test_there_is_one_example_of_each_kind() -> None:
    assert sorted(p.name for p in EXAMPLES.glob("*.yaml")) == [
        "cloud-vm.yaml", "empty-disk.yaml", "halted.yaml", "image-overlay.yaml", "minimal.yaml"]


def test_minimal_example_has_no_disks_and_always_runs() -> None:
    spec = spec_of("minimal.yaml")
    assert (spec.run_strategy, spec.memory_bytes, spec.disks, spec.interfaces) == ("Always", 64 * 2**20, (), ())


def test_empty_disk_example_has_one_new_disk() -> None:
    (disk,) = spec_of("empty-disk.yaml").disks
    assert disk.image is None and disk.size_bytes == 2**30


def test_image_overlay_example_has_an_image_disk_and_a_network_interface() -> None:
    spec = spec_of("image-overlay.yaml")
    (disk,) = spec.disks
    (nic,) = spec.interfaces
    assert disk.image == "base.qcow2"
    assert nic.network == "default" and nic.mac_address == "52:54:00:12:34:56"


def test_halted_example_stays_stopped() -> None:
    assert spec_of("halted.yaml").run_strategy == "Halted"


def test_cloud_vm_example_boots_the_guest_image_with_a_key_and_ssh_on_127_0_0_1() -> None:
    spec = spec_of("cloud-vm.yaml")
    (disk,) = spec.disks
    assert disk.image == "debian-cloud.qcow2"
    assert spec.boot is not None and (spec.boot.kernel, spec.boot.initrd) == ("debian-cloud.vmlinuz",
                                                                             "debian-cloud.initrd")
    guest_image = (EXAMPLES.parent / "hack" / "guest-image.sh").read_text()
    assert f'CMDLINE="{spec.boot.cmdline}"' in guest_image
    (nic,) = spec.interfaces
    assert nic.user and [(f.port, f.host_port) for f in nic.port_forwards] == [(22, 2222)]
    assert len(spec.ssh_authorized_keys) == 1 and spec.cloud_init is not None

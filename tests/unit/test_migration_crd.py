"""The VirtualMachineMigration CRD: names, printer columns, a structural schema whose enums are the
operator's own, and a description for every field."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from libvirt_operator.api import constants
from libvirt_operator.api.migration import MigrationPhase, StorageMode
from libvirt_operator.api.spec import DNS1123_SUBDOMAIN
from tests.unit.test_crd import _properties, structural_problems

REPO = Path(__file__).resolve().parents[2]
CRD_FILE = REPO / "deploy" / "crds" / f"{constants.MIGRATION_CRD_NAME}.yaml"


@pytest.fixture(scope="module")
def crd() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(CRD_FILE.read_text())
    return loaded


@pytest.fixture(scope="module")
def schema(crd: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return result


def test_packaged_crd_is_a_relative_symlink_to_the_deployed_one() -> None:
    assert constants.MIGRATION_CRD_PATH.is_symlink()
    assert not Path(constants.MIGRATION_CRD_PATH.readlink()).is_absolute()
    assert constants.MIGRATION_CRD_PATH.resolve() == CRD_FILE.resolve()


def test_names_group_and_version_are_the_vms(crd: dict[str, Any]) -> None:
    assert crd["metadata"]["name"] == constants.MIGRATION_CRD_NAME
    spec = crd["spec"]
    assert (spec["group"], spec["scope"]) == (constants.GROUP, "Namespaced")
    assert spec["names"] == {
        "kind": constants.MIGRATION_KIND, "listKind": "VirtualMachineMigrationList",
        "plural": constants.MIGRATION_PLURAL, "singular": constants.MIGRATION_SINGULAR,
        "shortNames": list(constants.MIGRATION_SHORT_NAMES), "categories": [constants.CATEGORY],
    }
    assert "vmim" not in spec["names"]["shortNames"]  # KubeVirt's
    (version,) = spec["versions"]
    assert (version["name"], version["served"], version["storage"]) == (constants.VERSION, True, True)
    assert version["subresources"] == {"status": {}}


def test_printer_columns(crd: dict[str, Any]) -> None:
    columns = [(c["name"], c["jsonPath"], c.get("priority", 0))
               for c in crd["spec"]["versions"][0]["additionalPrinterColumns"]]
    assert columns == [
        ("VM", ".spec.vmName", 0), ("Phase", ".status.phase", 0), ("Source", ".status.sourceNode", 0),
        ("Target", ".spec.targetNode", 0), ("Age", ".metadata.creationTimestamp", 0),
        ("Storage", ".status.storage", 1), ("Downtime-ms", ".status.job.downtimeMs", 1),
        ("Message", ".status.message", 1),
    ]


def test_schema_is_structural_typed_and_described(schema: dict[str, Any]) -> None:
    assert list(structural_problems(schema, "openAPIV3Schema")) == []
    fields = list(_properties(schema, ""))
    assert [p for p, node in fields if p != ".metadata" and not str(node.get("description", "")).strip()] == []
    assert [p for p, node in fields if "type" not in node] == []


def test_spec_is_required_immutable_and_names_are_dns_subdomains(schema: dict[str, Any]) -> None:
    spec = schema["properties"]["spec"]
    assert schema["required"] == ["spec"] and spec["required"] == ["vmName", "targetNode"]
    assert spec["x-kubernetes-validations"][0]["rule"] == "self == oldSelf"
    for name in ("vmName", "targetNode"):
        field = spec["properties"][name]
        assert field["pattern"] == f"^{DNS1123_SUBDOMAIN}$" and field["maxLength"] == 253
        assert re.fullmatch(field["pattern"][1:-1], "node-b.example")


def test_status_enums_are_the_operators(schema: dict[str, Any]) -> None:
    status = schema["properties"]["status"]["properties"]
    assert status["phase"]["enum"] == [p.value for p in MigrationPhase]
    assert status["storage"]["enum"] == [m.value for m in StorageMode]
    assert set(status["job"]["properties"]) == {"timeElapsedMs", "dataTotal", "dataProcessed", "dataRemaining",
                                                "memoryProcessed", "diskProcessed", "downtimeMs"}

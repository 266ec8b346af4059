"""The VirtualMachine CRD: names, printer columns, a structural schema, and a schema that refuses what the
node's spec parser refuses (checked here with a small OpenAPI validator; the emulator's tests check the
API's 422 answers)."""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from libvirt_operator.api import constants
from libvirt_operator.api.quantity import QUANTITY_PATTERN
from libvirt_operator.api.spec import (
    BUSES,
    DNS1123_LABEL,
    DNS1123_SUBDOMAIN,
    FILE_NAME,
    FIRMWARES,
    IMAGE_PATTERN,
    MIN_HOST_PORT,
    MODELS,
    PROTOCOLS,
    RUN_STRATEGIES,
    SHA256_HEX,
    SSH_PUBLIC_KEY,
    UNICAST_MAC,
    SpecError,
    parse_spec,
)
from libvirt_operator.api.status import Phase, PowerState
from tests.unit.test_spec import BAD, FULL, with_change

REPO = Path(__file__).resolve().parents[2]
CRD_FILE = REPO / "deploy" / "crds" / "virtualmachines.virt.libvirt-operator.dev.yaml"


@pytest.fixture(scope="module")
def crd() -> dict[str, Any]:
    with open(CRD_FILE) as handle:
        loaded: dict[str, Any] = yaml.safe_load(handle)
    return loaded


@pytest.fixture(scope="module")
def version(crd: dict[str, Any]) -> dict[str, Any]:
    versions: list[dict[str, Any]] = crd["spec"]["versions"]
    assert len(versions) == 1
    return versions[0]


@pytest.fixture(scope="module")
def schema(version: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = version["schema"]["openAPIV3Schema"]
    return result


def test_packaged_crd_is_a_relative_symlink_to_the_deployed_one() -> None:
    assert constants.CRD_PATH.is_symlink()
    assert not Path(constants.CRD_PATH.readlink()).is_absolute()
    assert constants.CRD_PATH.resolve() == CRD_FILE.resolve()


def test_names_match_the_api_contract(crd: dict[str, Any], version: dict[str, Any]) -> None:
    assert crd["apiVersion"] == "apiextensions.k8s.io/v1"
    assert crd["kind"] == "CustomResourceDefinition"
    assert crd["metadata"]["name"] == constants.CRD_NAME == "virtualmachines.virt.libvirt-operator.dev"
    spec = crd["spec"]
    assert spec["group"] == constants.GROUP
    assert spec["scope"] == "Namespaced"
    assert spec["names"] == {
        "kind": constants.KIND, "listKind": "VirtualMachineList", "plural": constants.PLURAL,
        "singular": constants.SINGULAR, "shortNames": ["lvm", "lvms"], "categories": ["libvirt"],
    }
    assert list(constants.SHORT_NAMES) == ["lvm", "lvms"] and constants.CATEGORY == "libvirt"
    assert "vm" not in spec["names"]["shortNames"] and "vmi" not in spec["names"]["shortNames"]
    assert (version["name"], version["served"], version["storage"]) == (constants.VERSION, True, True)
    assert version["subresources"] == {"status": {}}


def test_printer_columns(version: dict[str, Any]) -> None:
    columns = [(c["name"], c["type"], c["jsonPath"], c.get("priority", 0))
               for c in version["additionalPrinterColumns"]]
    assert columns == [
        ("Phase", "string", ".status.phase", 0),
        ("Power", "string", ".status.powerState", 0),
        ("Node", "string", ".spec.nodeName", 0),
        ("Age", "date", ".metadata.creationTimestamp", 0),
        ("Strategy", "string", ".spec.runStrategy", 1),
        ("Domain", "string", ".status.domainName", 1),
        ("Ready", "string", '.status.conditions[?(@.type=="Ready")].status', 1),
    ]


# --- structural schema -----------------------------------------------------------------------------

JUNCTORS = ("allOf", "anyOf", "oneOf", "not")
INT_OR_STRING = [{"type": "integer"}, {"type": "string"}]
# Not allowed inside logical junctors of a structural schema.
NOT_IN_JUNCTORS = ("type", "default", "description", "nullable", "additionalProperties", "title",
                   "x-kubernetes-preserve-unknown-fields", "x-kubernetes-int-or-string",
                   "x-kubernetes-embedded-resource", "x-kubernetes-list-type", "x-kubernetes-list-map-keys")


def structural_problems(node: dict[str, Any], path: str) -> Iterator[str]:
    """The rules of Kubernetes' structural schemas that this CRD could break."""
    if "x-kubernetes-preserve-unknown-fields" in node and node["x-kubernetes-preserve-unknown-fields"] is not True:
        yield f"{path}: x-kubernetes-preserve-unknown-fields must be true or absent"
    if node.get("x-kubernetes-int-or-string"):
        if "type" in node:
            yield f"{path}: int-or-string must not declare a type"
    elif "type" not in node:
        yield f"{path}: no type"
    if "properties" in node and "additionalProperties" in node:
        yield f"{path}: properties and additionalProperties together"
    for junctor in JUNCTORS:
        if junctor == "anyOf" and node.get("x-kubernetes-int-or-string") and node.get(junctor) == INT_OR_STRING:
            continue  # the one junctor with types a structural schema allows (apiextensions' own exception)
        branches = node.get(junctor)
        for index, branch in enumerate([branches] if isinstance(branches, dict) else branches or []):
            for key in NOT_IN_JUNCTORS:
                if key in branch:
                    yield f"{path}.{junctor}[{index}]: {key} is not allowed in a logical junctor"
            for name in branch.get("properties", {}):
                if name not in node.get("properties", {}):
                    yield f"{path}.{junctor}[{index}]: property {name} is not specified outside"
            for name in branch.get("required", []):
                if name not in node.get("properties", {}):
                    yield f"{path}.{junctor}[{index}]: requires unknown property {name}"
    if node.get("x-kubernetes-list-type") == "map":
        items = node.get("items", {})
        for key in node.get("x-kubernetes-list-map-keys", []):
            key_schema = items.get("properties", {}).get(key)
            if key_schema is None or key_schema.get("type") not in ("string", "integer", "boolean"):
                yield f"{path}: list-map key {key} must be a scalar property"
            elif key not in items.get("required", []) and "default" not in key_schema:
                yield f"{path}: list-map key {key} must be required or defaulted"
    for name, child in node.get("properties", {}).items():
        yield from structural_problems(child, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        yield from structural_problems(node["items"], f"{path}[]")
    if "default" in node:
        for problem in validate(node, copy.deepcopy(node["default"]), f"{path}(default)"):
            yield f"default does not validate: {problem}"


def test_schema_is_structural(schema: dict[str, Any]) -> None:
    assert list(structural_problems(schema, "openAPIV3Schema")) == []
    # Only the top-level type is allowed for metadata.
    assert schema["properties"]["metadata"] == {"type": "object"}


def _properties(node: dict[str, Any], path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every property of the schema, at every level (array items included), with its path."""
    for name, child in node.get("properties", {}).items():
        yield f"{path}.{name}", child
        yield from _properties(child, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        yield from _properties(node["items"], f"{path}[]")


def test_every_field_has_a_description_for_kubectl_explain(schema: dict[str, Any]) -> None:
    # metadata is Kubernetes' ObjectMeta: a CRD may not describe it (only its type is allowed).
    missing = [path for path, node in _properties(schema, "") if path != ".metadata"
               and not str(node.get("description", "")).strip()]
    assert missing == []
    assert len(list(_properties(schema, ""))) >= 48  # the walk reached the nested fields


def test_every_field_has_a_type_and_quantities_are_integers_or_strings(schema: dict[str, Any]) -> None:
    untyped = [path for path, node in _properties(schema, "")
               if "type" not in node and not node.get("x-kubernetes-int-or-string")]
    assert untyped == []
    quantities = {path: node for path, node in _properties(schema, "") if node.get("x-kubernetes-int-or-string")}
    assert set(quantities) == {".spec.memory", ".spec.disks[].size"}
    for path, node in quantities.items():
        assert node["anyOf"] == INT_OR_STRING, path
        assert node["pattern"] == QUANTITY_PATTERN, path


def test_status_is_structural_and_complete(schema: dict[str, Any]) -> None:
    status = schema["properties"]["status"]
    assert "x-kubernetes-preserve-unknown-fields" not in status
    assert set(status["properties"]) == {
        "phase", "powerState", "reason", "message", "domainName", "domainUUID", "nodeName",
        "observedGeneration", "conditions", "lastEvent", "disks", "startedAt", "stoppedAt", "restarts",
        "observedRetry", "interfaces", "guestOS", "consoleLog", "observedRestart",
    }
    assert status["properties"]["phase"]["enum"] == [p.value for p in Phase]
    assert status["properties"]["powerState"]["enum"] == [p.value for p in PowerState]
    conditions = status["properties"]["conditions"]
    assert (conditions["x-kubernetes-list-type"], conditions["x-kubernetes-list-map-keys"]) == ("map", ["type"])
    assert set(conditions["items"]["properties"]) == {"type", "status", "reason", "message",
                                                      "lastTransitionTime", "observedGeneration"}
    assert conditions["items"]["properties"]["status"]["enum"] == ["True", "False", "Unknown"]
    assert set(status["properties"]["lastEvent"]["properties"]) == {"type", "detail", "time"}
    assert set(status["properties"]["disks"]["items"]["properties"]) == {"name", "path"}


def test_schema_patterns_and_enums_are_the_parsers(schema: dict[str, Any]) -> None:
    spec = schema["properties"]["spec"]["properties"]
    disk = spec["disks"]["items"]["properties"]
    nic = spec["interfaces"]["items"]["properties"]
    assert spec["nodeName"]["pattern"] == f"^{DNS1123_SUBDOMAIN}$"
    assert disk["name"]["pattern"] == nic["name"]["pattern"] == f"^{DNS1123_LABEL}$"
    assert nic["network"]["pattern"] == nic["bridge"]["pattern"] == f"^{FILE_NAME}$"
    assert disk["image"]["pattern"] == f"^({IMAGE_PATTERN})$"
    assert disk["sha256"]["pattern"] == f"^{SHA256_HEX}$"
    assert nic["macAddress"]["pattern"] == f"^{UNICAST_MAC}$"
    assert spec["sshAuthorizedKeys"]["items"]["pattern"] == f"^{SSH_PUBLIC_KEY}$"
    assert spec["cloudInit"]["properties"]["secretRef"]["properties"]["name"]["pattern"] == f"^{DNS1123_SUBDOMAIN}$"
    assert spec["boot"]["properties"]["kernel"]["pattern"] == spec["boot"]["properties"]["initrd"]["pattern"] == (
        f"^{FILE_NAME}$")
    forward = nic["user"]["properties"]["portForwards"]["items"]["properties"]
    assert forward["protocol"]["enum"] == list(PROTOCOLS)
    assert forward["hostPort"]["minimum"] == MIN_HOST_PORT
    assert spec["memory"]["pattern"] == disk["size"]["pattern"] == QUANTITY_PATTERN
    assert spec["runStrategy"]["enum"] == list(RUN_STRATEGIES)
    assert disk["bus"]["enum"] == list(BUSES)
    assert nic["model"]["enum"] == list(MODELS)
    assert spec["firmware"]["enum"] == list(FIRMWARES)


# --- a small OpenAPI validator, enough for this schema ----------------------------------------------

def _matches(pattern: str, value: str) -> bool:
    # Go's RE2 "$" (no multiline) is the end of text; Python's would also accept a trailing newline.
    return re.search(pattern[:-1] + r"\Z" if pattern.endswith("$") else pattern, value) is not None


def validate(node: dict[str, Any], value: Any, path: str = "") -> list[str]:
    errors: list[str] = []
    if node.get("x-kubernetes-int-or-string"):
        if not (isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))):
            return [f"{path}: must be an integer or a string"]
    elif "type" in node:
        expected = {"object": dict, "array": list, "string": str, "integer": int, "boolean": bool}[node["type"]]
        if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
            return [f"{path}: must be of type {node['type']}"]
    if "enum" in node and value not in node["enum"]:
        errors.append(f"{path}: not one of {node['enum']}")
    if isinstance(value, str):
        if "maxLength" in node and len(value) > node["maxLength"]:
            errors.append(f"{path}: longer than {node['maxLength']}")
        if "pattern" in node and not _matches(node["pattern"], value):
            errors.append(f"{path}: does not match {node['pattern']}")
    if isinstance(value, int) and not isinstance(value, bool):
        if "minimum" in node and value < node["minimum"]:
            errors.append(f"{path}: below {node['minimum']}")
        if "maximum" in node and value > node["maximum"]:
            errors.append(f"{path}: above {node['maximum']}")
    if isinstance(value, dict):
        for name in node.get("required", []):
            if name not in value:
                errors.append(f"{path}.{name}: required")
        for name, child in node.get("properties", {}).items():
            if name in value:
                errors += validate(child, value[name], f"{path}.{name}")
        if "anyOf" in node and not any(all(r in value for r in b.get("required", [])) for b in node["anyOf"]):
            errors.append(f"{path}: matches none of anyOf")
        if "oneOf" in node:
            matching = [b for b in node["oneOf"] if all(r in value for r in b.get("required", []))]
            if len(matching) != 1:
                errors.append(f"{path}: matches {len(matching)} of oneOf, not exactly one")
    if isinstance(value, list):
        if "maxItems" in node and len(value) > node["maxItems"]:
            errors.append(f"{path}: more than {node['maxItems']} items")
        for index, item in enumerate(value):
            errors += validate(node.get("items", {}), item, f"{path}[{index}]")
        if node.get("x-kubernetes-list-type") == "map":
            keys = [tuple(item.get(k) for k in node["x-kubernetes-list-map-keys"]) for item in value
                    if isinstance(item, dict)]
            if len(keys) != len(set(keys)):
                errors.append(f"{path}: duplicate keys")
    return errors


def prune(node: dict[str, Any], value: Any) -> Any:
    """What the API server stores: unknown fields dropped (the schema never preserves them)."""
    if isinstance(value, dict) and "properties" in node:
        return {k: prune(node["properties"][k], v) for k, v in value.items() if k in node["properties"]}
    if isinstance(value, list) and isinstance(node.get("items"), dict):
        return [prune(node["items"], item) for item in value]
    return value


# Refusals that need the node: its own limits, checks the schema cannot express (the minimum of a
# quantity given as a string), and unknown fields (which the API server prunes rather than refuses).
NODE_ONLY = {
    "cores beyond node", "memory beyond node", "size beyond node", "memory too small", "size below minimum",
    "unknown disk field", "unknown spec field", "unknown cpu field", "secretRef with inline data",
    "unknown cloudInit field", "refused URL scheme", "URL with credentials", "image too long",
    "URL without sha256", "sha256 for a file name",
}


def test_full_spec_is_valid_for_both(schema: dict[str, Any]) -> None:
    assert validate(schema, {"apiVersion": "x", "kind": "VirtualMachine", "metadata": {}, "spec": FULL}) == []
    parse_spec(FULL)


def test_a_vm_without_spec_is_refused(schema: dict[str, Any]) -> None:
    assert validate(schema, {"metadata": {}}) == [".spec: required"]


@pytest.mark.parametrize(("change", "value"), [b[1:3] for b in BAD if b[0] not in NODE_ONLY],
                         ids=[b[0] for b in BAD if b[0] not in NODE_ONLY])
def test_schema_refuses_what_the_parser_refuses(schema: dict[str, Any], change: str, value: Any) -> None:
    spec = with_change(change, value)
    with pytest.raises(SpecError):
        parse_spec(spec)
    errors = validate(schema["properties"]["spec"], spec, "spec")
    assert errors, f"schema accepted {change}={value!r}"


@pytest.mark.parametrize(("change", "value"), [b[1:3] for b in BAD if b[0] in NODE_ONLY],
                         ids=[b[0] for b in BAD if b[0] in NODE_ONLY])
def test_node_only_refusals_pass_the_schema(schema: dict[str, Any], change: str, value: Any) -> None:
    spec_schema = schema["properties"]["spec"]
    spec = with_change(change, value)
    assert validate(spec_schema, spec, "spec") == []
    stored = prune(spec_schema, spec)
    if stored != spec:  # an unknown field: pruned by the API, so the node never sees it
        parse_spec(stored)
    else:
        with pytest.raises(SpecError):
            parse_spec(stored)


def test_duplicate_list_keys_are_refused_by_the_schema(schema: dict[str, Any]) -> None:
    spec = with_change("disks.1.name", "root")
    assert any("duplicate keys" in e for e in validate(schema["properties"]["spec"], spec, "spec"))
    spec = with_change("interfaces.1.name", "nic0")
    assert any("duplicate keys" in e for e in validate(schema["properties"]["spec"], spec, "spec"))


def test_examples_are_valid_for_the_schema(schema: dict[str, Any]) -> None:
    files = sorted((REPO / "examples").glob("*.yaml"))
    assert files
    for path in files:
        with open(path) as handle:
            for document in yaml.safe_load_all(handle):
                if document and document.get("kind") == constants.KIND:
                    assert validate(schema, document) == [], path.name



def test_spec_node_name_is_a_selectable_field_for_the_node_scoped_watch(version: dict[str, Any]) -> None:
    assert version.get("selectableFields") == [{"jsonPath": ".spec.nodeName"}]

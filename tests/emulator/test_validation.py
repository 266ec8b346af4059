"""CRD schema admission over HTTP: 422 causes with field paths, defaults, pruning, fieldValidation."""

from __future__ import annotations

from typing import Any

import kubernetes
import pytest
import requests
from kubernetes.client import ApiException

from tests.emulator.conftest import GROUP, KIND, PLURAL, VERSION, EmulatorThread, gadget, status_of

COLLECTION = f"/apis/{GROUP}/{VERSION}/namespaces/default/{PLURAL}"


@pytest.fixture
def custom(api: kubernetes.client.ApiClient) -> kubernetes.client.CustomObjectsApi:
    return kubernetes.client.CustomObjectsApi(api)


def rejected(custom: kubernetes.client.CustomObjectsApi, body: dict[str, Any]) -> dict[str, Any]:
    with pytest.raises(ApiException) as caught:
        custom.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, body)
    assert caught.value.status == 422
    return status_of(caught.value)


def test_enum_violation_inside_a_list_names_the_indexed_field(custom: kubernetes.client.CustomObjectsApi) -> None:
    status = rejected(custom, gadget("a", parts=[{"name": "p1"}, {"name": "p2", "bus": "scsi"}]))
    assert status["reason"] == "Invalid"
    assert status["details"] == {"name": "a", "group": GROUP, "kind": KIND, "causes": [{
        "reason": "FieldValueNotSupported", "message": 'Unsupported value: "scsi": supported values: "virtio", "sata"',
        "field": "spec.parts[1].bus"}]}
    assert status["message"] == (f'{KIND}.{GROUP} "a" is invalid: spec.parts[1].bus: Unsupported value: "scsi": '
                                 'supported values: "virtio", "sata"')


def test_several_violations_are_all_reported(custom: kubernetes.client.CustomObjectsApi) -> None:
    body = gadget("a", size=11, label="UPPER")
    del body["spec"]["color"]
    fields = {c["field"] for c in rejected(custom, body)["details"]["causes"]}
    assert fields == {"spec.size", "spec.label", "spec.color"}


def test_type_max_items_and_list_map_key_duplicates(custom: kubernetes.client.CustomObjectsApi) -> None:
    causes = rejected(custom, gadget("a", size="big"))["details"]["causes"]
    assert causes[0]["field"] == "spec.size" and causes[0]["reason"] == "FieldValueTypeInvalid"
    many = [{"name": f"p{i}"} for i in range(4)]
    assert rejected(custom, gadget("a", parts=many))["details"]["causes"][0]["reason"] == "FieldValueTooMany"
    duplicate = rejected(custom, gadget("a", parts=[{"name": "p"}, {"name": "p"}]))["details"]["causes"]
    assert duplicate[0]["field"] == "spec.parts[1]" and duplicate[0]["reason"] == "FieldValueDuplicate"


def test_updates_are_validated_too(custom: kubernetes.client.CustomObjectsApi) -> None:
    custom.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, gadget("a"))
    with pytest.raises(ApiException) as caught:
        custom.patch_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, "a", {"spec": {"color": "pink"}})
    assert caught.value.status == 422
    assert status_of(caught.value)["details"]["causes"][0]["field"] == "spec.color"


def test_defaults_are_applied_and_unknown_fields_pruned(custom: kubernetes.client.CustomObjectsApi) -> None:
    body = gadget("a", parts=[{"name": "p1"}], bogus=True, extra={"anything": {"goes": 1}})
    made = custom.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, body)
    assert made["spec"] == {"color": "red", "size": 1, "parts": [{"name": "p1", "bus": "virtio"}],
                            "extra": {"anything": {"goes": 1}}}


def test_field_validation_strict_rejects_unknown_fields_and_warn_warns(emu: EmulatorThread) -> None:
    body = gadget("a", bogus=True)
    strict = requests.post(f"{emu.url}{COLLECTION}?fieldValidation=Strict", json=body, timeout=10)
    assert strict.status_code == 400
    assert strict.json()["message"] == (f'{KIND} in version "{VERSION}" cannot be handled as a {KIND}: strict '
                                        'decoding error: unknown field "spec.bogus"')
    warned = requests.post(f"{emu.url}{COLLECTION}?fieldValidation=Warn", json=body, timeout=10)
    assert warned.status_code == 201
    assert warned.headers["Warning"] == '299 - "unknown field \\"spec.bogus\\""'
    ignored = requests.post(f"{emu.url}{COLLECTION}?fieldValidation=Ignore", json=gadget("b", bogus=1), timeout=10)
    assert ignored.status_code == 201 and "Warning" not in ignored.headers


def test_mismatched_api_version_or_kind_is_400(emu: EmulatorThread) -> None:
    body = gadget("a")
    body["kind"] = "Widget"
    rsp = requests.post(emu.url + COLLECTION, json=body, timeout=10)
    assert rsp.status_code == 400 and rsp.json()["reason"] == "BadRequest"
    assert requests.post(emu.url + COLLECTION, data=b"{not json", timeout=10).status_code == 400

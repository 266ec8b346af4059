"""Secrets as the real API server keeps them: stringData folded into base64 data, type defaulted and
fixed, immutability, validation; kubectl's and Helm's protobuf bodies."""

from __future__ import annotations

import base64
from typing import Any

import kubernetes
import pytest
import requests
from kubernetes.client import ApiException

from tests.emulator.conftest import EmulatorThread, Kubectl, status_of


@pytest.fixture
def core(api: kubernetes.client.ApiClient) -> kubernetes.client.CoreV1Api:
    return kubernetes.client.CoreV1Api(api)


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def secret(name: str, **fields: Any) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, **fields}


def causes(exc: ApiException) -> list[tuple[str, str]]:
    return [(c["field"], c["message"]) for c in status_of(exc)["details"]["causes"]]


def test_string_data_is_stored_as_base64_data_and_never_returned(core: kubernetes.client.CoreV1Api) -> None:
    created = core.create_namespaced_secret("default", secret("s", data={"a": b64("from data"), "b": b64("old")},
                                                              stringData={"b": "from stringData", "c": "ç"}))
    assert created.type == "Opaque"
    assert created.data == {"a": b64("from data"), "b": b64("from stringData"), "c": b64("ç")}
    assert created.string_data is None
    raw = core.read_namespaced_secret("s", "default", _preload_content=False).json()
    assert "stringData" not in raw and raw["type"] == "Opaque"


def test_a_patch_with_string_data_changes_only_its_keys(core: kubernetes.client.CoreV1Api) -> None:
    core.create_namespaced_secret("default", secret("s", stringData={"keep": "1", "change": "2"}))
    patched = core.patch_namespaced_secret("s", "default", {"stringData": {"change": "3", "add": "4"}})
    assert patched.data == {"keep": b64("1"), "change": b64("3"), "add": b64("4")}


def test_data_that_is_not_base64_is_a_bad_request(core: kubernetes.client.CoreV1Api) -> None:
    with pytest.raises(ApiException) as caught:
        core.create_namespaced_secret("default", secret("s", data={"a": "not base64!"}))
    assert caught.value.status == 400
    assert 'Secret in version "v1" cannot be handled as a Secret' in status_of(caught.value)["message"]


def test_invalid_keys_and_missing_keys_of_the_type_are_refused(core: kubernetes.client.CoreV1Api) -> None:
    with pytest.raises(ApiException) as caught:
        core.create_namespaced_secret("default", secret("s", type="kubernetes.io/tls",
                                                        stringData={"tls.crt": "x", "bad key": "y"}))
    assert caught.value.status == 422
    fields = [field for field, _message in causes(caught.value)]
    assert fields == ["data[bad key]", "data[tls.key]"]


def test_type_cannot_change_and_an_immutable_secret_keeps_its_data(core: kubernetes.client.CoreV1Api) -> None:
    core.create_namespaced_secret("default", secret("s", stringData={"a": "1"}, immutable=True))
    with pytest.raises(ApiException) as caught:
        core.patch_namespaced_secret("s", "default", {"type": "kubernetes.io/basic-auth",
                                                      "stringData": {"a": "2", "username": "u"}})
    assert caught.value.status == 422
    assert causes(caught.value) == [
        ("type", 'Invalid value: "kubernetes.io/basic-auth": field is immutable'),
        ("data", "Forbidden: field is immutable when `immutable` is set")]
    assert core.read_namespaced_secret("s", "default").data == {"a": b64("1")}


def test_kubectl_creates_secrets_in_protobuf_and_lists_their_type_and_size(kubectl: Kubectl) -> None:
    kubectl.run("create", "secret", "generic", "creds", "--from-literal=user=admin", "--from-literal=pass=s3cret")
    stored = kubectl.json("get", "secret", "creds")
    assert stored["type"] == "Opaque" and stored["data"] == {"user": b64("admin"), "pass": b64("s3cret")}
    table = kubectl.run("get", "secret", "creds").stdout.split()
    assert table[:4] == ["NAME", "TYPE", "DATA", "AGE"] and table[4:7] == ["creds", "Opaque", "2"]


def test_a_protobuf_delete_options_body_is_understood(emu: EmulatorThread, core: kubernetes.client.CoreV1Api) -> None:
    core.create_namespaced_secret("default", secret("release", type="helm.sh/release.v1", stringData={"r": "x"}))
    # What Helm's typed client sends: the k8s protobuf envelope around an empty v1 DeleteOptions.
    body = bytes.fromhex("6b3873000a130a027631120d44656c6574654f7074696f6e7312001a002200")
    rsp = requests.delete(f"{emu.url}/api/v1/namespaces/default/secrets/release", data=body, timeout=10,
                          headers={"Content-Type": "application/vnd.kubernetes.protobuf",
                                   "Accept": "application/vnd.kubernetes.protobuf,application/json"})
    assert rsp.status_code == 200, rsp.text
    assert [s.metadata.name for s in core.list_namespaced_secret("default").items] == []

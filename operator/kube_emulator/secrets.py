"""Secrets as kube-apiserver treats them: `stringData` folded into `data`, `type` defaulted and fixed.

What a client writes in `stringData` is base64-encoded into `data` (a key in both: `stringData` wins)
and never stored or returned itself; `type` defaults to Opaque and cannot change; `immutable: true`
freezes `data` and itself. Validation follows ValidateSecret: config-key names, 1 MiB in total, and the
keys or annotation each built-in type requires. Values in `data` that are not base64 cannot be decoded
into a Secret at all, a 400 as the real server's decoder answers.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping
from typing import Any

from kube_emulator import errors
from kube_emulator.schema import Cause

JSON = dict[str, Any]
SECRETS_KEY = ("", "secrets")
MAX_SIZE = 1024 * 1024
_CONFIG_KEY = re.compile(r"[-._a-zA-Z0-9]+")
_KEY_MESSAGE = ("a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  "
                "or 'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')")
# Built-in types and the data keys they require (any one of them for basic-auth).
_REQUIRED_KEYS: Mapping[str, tuple[tuple[str, ...], ...]] = {
    "kubernetes.io/dockercfg": ((".dockercfg",),),
    "kubernetes.io/dockerconfigjson": ((".dockerconfigjson",),),
    "kubernetes.io/basic-auth": (("username", "password"),),
    "kubernetes.io/ssh-auth": (("ssh-privatekey",),),
    "kubernetes.io/tls": (("tls.crt",), ("tls.key",)),
}
SERVICE_ACCOUNT_TOKEN = "kubernetes.io/service-account-token"
SERVICE_ACCOUNT_ANNOTATION = "kubernetes.io/service-account.name"


def fold(obj: JSON) -> JSON:
    """The Secret as it is stored: `stringData` encoded into `data`, `type` defaulted (a new dict)."""
    secret = dict(obj)
    data = secret.get("data")
    if data is not None and not isinstance(data, Mapping):
        raise _undecodable("data must be an object")
    data = dict(data or {})
    for key, value in data.items():
        if not isinstance(value, str):
            raise _undecodable(f"data[{key}] must be a base64 string")
        try:
            base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise _undecodable(f"illegal base64 data in data[{key}]: {exc}") from None
    string_data = secret.pop("stringData", None)
    if string_data is not None and not isinstance(string_data, Mapping):
        raise _undecodable("stringData must be an object")
    for key, value in (string_data or {}).items():
        if not isinstance(value, str):
            raise _undecodable(f"stringData[{key}] must be a string")
        data[key] = base64.b64encode(value.encode()).decode()
    if data:
        secret["data"] = data
    else:
        secret.pop("data", None)
    secret["type"] = secret.get("type") or "Opaque"
    return secret


def validate(secret: Mapping[str, Any], old: Mapping[str, Any] | None) -> list[Cause]:
    causes: list[Cause] = []
    data: Mapping[str, str] = secret.get("data") or {}
    size = 0
    for key, value in data.items():
        if len(key) > 253 or not _CONFIG_KEY.fullmatch(key) or key in (".", ".."):
            reason = "must not be '.'" if key == "." else "must not be '..'" if key == ".." else _KEY_MESSAGE
            causes.append(Cause("FieldValueInvalid", f'Invalid value: "{key}": {reason}', f"data[{key}]"))
        size += len(base64.b64decode(value))
    if size > MAX_SIZE:
        causes.append(Cause("FieldValueTooLong", f"Too long: may not be more than {MAX_SIZE} bytes", "data"))
    kind = str(secret.get("type"))
    for alternatives in _REQUIRED_KEYS.get(kind, ()):
        if not any(key in data for key in alternatives):
            causes.append(Cause("FieldValueRequired", "Required value", f"data[{alternatives[0]}]"))
    if kind == SERVICE_ACCOUNT_TOKEN and \
            not (secret.get("metadata", {}).get("annotations") or {}).get(SERVICE_ACCOUNT_ANNOTATION):
        causes.append(Cause("FieldValueRequired", "Required value",
                            f"metadata.annotations[{SERVICE_ACCOUNT_ANNOTATION}]"))
    if old is not None:
        causes += _update_causes(secret, old)
    return causes


def _update_causes(secret: Mapping[str, Any], old: Mapping[str, Any]) -> list[Cause]:
    causes: list[Cause] = []
    if secret.get("type") != old.get("type"):
        causes.append(Cause("FieldValueInvalid", f'Invalid value: "{secret.get("type")}": field is immutable',
                            "type"))
    if old.get("immutable") is True:
        frozen = "Forbidden: field is immutable when `immutable` is set"
        if secret.get("immutable") is not True:
            causes.append(Cause("FieldValueForbidden", frozen, "immutable"))
        if (secret.get("data") or {}) != (old.get("data") or {}):
            causes.append(Cause("FieldValueForbidden", frozen, "data"))
    return causes


def _undecodable(detail: str) -> errors.ApiError:
    return errors.bad_request(f'Secret in version "v1" cannot be handled as a Secret: {detail}')

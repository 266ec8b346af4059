"""API errors as kube-apiserver writes them: a `kind: Status` body with reason, details and code.

Messages follow the apiserver's wording (k8s.io/apimachinery/pkg/api/errors) because clients and
people match on them: kubectl prints them verbatim and kopf/the kubernetes client read `code`/`reason`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from kube_emulator.schema import Cause, message_for

JSON = dict[str, Any]

# HTTP code -> the reason kube-apiserver uses for a generic error of that code.
REASONS: Mapping[int, str] = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    406: "NotAcceptable",
    409: "Conflict",
    410: "Gone",
    413: "RequestEntityTooLarge",
    415: "UnsupportedMediaType",
    422: "Invalid",
    429: "TooManyRequests",
    500: "InternalError",
    503: "ServiceUnavailable",
    504: "Timeout",
}


@dataclass(eq=False)
class ApiError(Exception):
    """An error response: raising it anywhere in a handler produces the Status body."""

    code: int
    message: str
    reason: str | None = ""  # "": the usual reason of the code; None: no reason at all
    details: JSON | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__init__(self.message)
        if self.reason == "":
            self.reason = REASONS.get(self.code, "Unknown")

    def status(self) -> JSON:
        body: JSON = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
        }
        if self.reason is not None:
            body["reason"] = self.reason
        if self.details is not None:
            body["details"] = self.details
        body["code"] = self.code
        return body


def success_status(*, name: str, group: str, kind: str, uid: str) -> JSON:
    """What a delete of a resource that does not return the deleted object answers."""
    details: JSON = {"name": name}
    if group:
        details["group"] = group
    details["kind"] = kind
    details["uid"] = uid
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "details": details}


def _details(name: str, group: str, kind: str) -> JSON:
    details: JSON = {"name": name} if name else {}
    if group:
        details["group"] = group
    details["kind"] = kind
    return details


def qualified(plural: str, group: str) -> str:
    """`virtualmachines.virt.example.dev`, or just `namespaces` for the core group."""
    return f"{plural}.{group}" if group else plural


def not_found(plural: str, group: str, name: str) -> ApiError:
    return ApiError(404, f'{qualified(plural, group)} "{name}" not found', "NotFound", _details(name, group, plural))


def already_exists(plural: str, group: str, name: str) -> ApiError:
    return ApiError(
        409, f'{qualified(plural, group)} "{name}" already exists', "AlreadyExists", _details(name, group, plural)
    )


STALE = "the object has been modified; please apply your changes to the latest version and try again"


def conflict(plural: str, group: str, name: str, why: str = STALE) -> ApiError:
    return ApiError(
        409,
        f'Operation cannot be fulfilled on {qualified(plural, group)} "{name}": {why}',
        "Conflict",
        _details(name, group, plural),
    )


def forbidden(plural: str, group: str, name: str, why: str) -> ApiError:
    target = f'{qualified(plural, group)} "{name}"' if name else qualified(plural, group)
    return ApiError(403, f"{target} is forbidden: {why}", "Forbidden", _details(name, group, plural))


def invalid(kind: str, group: str, name: str, causes: Sequence[Cause]) -> ApiError:
    """422 as apiserver's NewInvalid: `Kind.group "name" is invalid: field: detail` (bracketed if several)."""
    details = _details(name, group, kind)
    details["causes"] = [c.as_status_cause() for c in causes]
    return ApiError(422, message_for(kind, name, causes, group=group), "Invalid", details)


def bad_request(message: str) -> ApiError:
    return ApiError(400, message, "BadRequest")


def expired(message: str) -> ApiError:
    """410 as the watch cache reports a resourceVersion older than its history ("Expired")."""
    return ApiError(410, message, "Expired")


def method_not_allowed() -> ApiError:
    return ApiError(405, "the server does not allow this method on the requested resource", "MethodNotAllowed", {})


def page_not_found() -> ApiError:
    return ApiError(404, "the server could not find the requested resource", "NotFound", {})


def unsupported_media_type(content_type: str, accepted: Sequence[str]) -> ApiError:
    return ApiError(
        415,
        f"the body of the request was in an unknown format - accepted media types include: {', '.join(accepted)}",
        "UnsupportedMediaType",
    )


def not_acceptable(accepted: Sequence[str]) -> ApiError:
    return ApiError(406, f"only the following media types are accepted: {', '.join(accepted)}", "NotAcceptable")


def injected(code: int, verb: str, resource: str) -> ApiError:
    """A fault asked for by a test (`KubeEmulator.inject_fault`), shaped like the real error of that code."""
    if code == 429:
        return ApiError(
            429,
            "Too many requests, please try again later.",
            "TooManyRequests",
            {"retryAfterSeconds": 1},
            {"Retry-After": "1"},
        )
    if code == 500:
        return ApiError(
            500, "Internal error occurred: injected fault", "InternalError", {"causes": [{"message": "injected fault"}]}
        )
    if code == 409:
        return ApiError(409, f"Operation cannot be fulfilled on {resource}: {STALE}", "Conflict", {"kind": resource})
    return ApiError(code, f"injected fault for {verb} {resource}", REASONS.get(code, "Unknown"), {})

"""Which verb and resource an API request is, from its method, path and query (as kube-apiserver names them)."""

from __future__ import annotations

from urllib.parse import parse_qs


def classify(method: str, path: str, query: str) -> tuple[str, str]:
    """(verb, resource[/subresource]) of a request, e.g. ("patch", "virtualmachines/status").

    Non-resource paths (/version, /apis, /openapi/v2) give (method.lower(), "")."""
    parts = [p for p in path.split("/") if p]
    if parts[:1] == ["api"]:
        rest = parts[2:]
    elif parts[:1] == ["apis"]:
        rest = parts[3:]
    else:
        return method.lower(), ""
    if len(rest) >= 2 and rest[0] == "namespaces" and len(rest) > 2:
        rest = rest[2:]  # /namespaces/NS/RESOURCE...; /namespaces/NS itself is the namespaces resource
    if not rest:
        return method.lower(), ""
    resource, name, sub = rest[0], rest[1] if len(rest) > 1 else None, rest[2] if len(rest) > 2 else None
    watch = parse_qs(query).get("watch", ["false"])[0] in ("1", "true")
    verb = {"GET": "get" if name else ("watch" if watch else "list"), "POST": "create", "PUT": "update",
            "PATCH": "patch", "DELETE": "delete" if name else "deletecollection"}.get(method, method.lower())
    return verb, f"{resource}/{sub}" if sub else resource

"""One API server as the differential tests see it: plain HTTP(S) from its kubeconfig, and normalisation.

`Api` sends requests with `http.client` (the real control plane's CA and client certificate, or the
emulator's token, from the kubeconfig), so that what is compared is what the server answered and not
what a client library made of it. `Watch` reads a watch stream on a thread of its own. `normalise`
replaces what legitimately differs between two servers (uids, timestamps, resourceVersions, generated
name suffixes, managed fields) by placeholders.
"""

from __future__ import annotations

import base64
import http.client
import json
import re
import socket
import ssl
import tempfile
import threading
import urllib.parse
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from testbed.polling import wait_for

JSON = dict[str, Any]
TABLE = "application/json;as=Table;v=v1;g=meta.k8s.io"
MERGE = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"
APPLY = "application/apply-patch+yaml"


@dataclass
class Reply:
    status: int
    headers: http.client.HTTPMessage
    text: str

    @property
    def body(self) -> Any:
        return json.loads(self.text) if self.text else None

    @property
    def warnings(self) -> list[str]:
        return self.headers.get_all("Warning") or []

    def summary(self) -> JSON:
        """Status code, kind and, for a Status, reason and the causes' type and field."""
        body = self.body if self.text.startswith("{") else {}
        found: JSON = {"code": self.status, "kind": body.get("kind")}
        if body.get("kind") == "Status":
            found["status"] = body.get("status")
            found["reason"] = body.get("reason")
            causes = (body.get("details") or {}).get("causes")
            if causes is not None:
                found["causes"] = sorted((c.get("reason"), c.get("field")) for c in causes)
        return found


def _materialise(config_dir: Path, data: str | None, path: str | None, name: str) -> str | None:
    """A kubeconfig's `*-data` (base64) as a file, or its file path."""
    if data:
        target = config_dir / name
        target.write_bytes(base64.b64decode(data))
        return str(target)
    return path


class Api:
    """Requests to one server, from its kubeconfig (its current context)."""

    def __init__(self, name: str, kubeconfig: Path) -> None:
        self.name = name
        config = yaml.safe_load(kubeconfig.read_text())
        context_name = config.get("current-context")
        context = next(c["context"] for c in config["contexts"] if c["name"] == context_name)
        cluster = next(c["cluster"] for c in config["clusters"] if c["name"] == context["cluster"])
        user = next((u["user"] for u in config.get("users") or () if u["name"] == context.get("user")), {})
        url = urllib.parse.urlsplit(cluster["server"])
        if url.hostname != "127.0.0.1":
            raise AssertionError(f"{name}: the differential tests only talk to 127.0.0.1, not {url.hostname}")
        self.https = url.scheme == "https"
        self.host, self.port = url.hostname, url.port or (443 if self.https else 80)
        self.headers: dict[str, str] = {}
        if user.get("token"):
            self.headers["Authorization"] = f"Bearer {user['token']}"
        self.context: ssl.SSLContext | None = None
        if self.https:
            self._certs = tempfile.TemporaryDirectory(prefix="lvo-diff-")
            certs = Path(self._certs.name)
            ca = _materialise(certs, cluster.get("certificate-authority-data"), cluster.get("certificate-authority"),
                              "ca.crt")
            self.context = ssl.create_default_context(cafile=ca)
            cert = _materialise(certs, user.get("client-certificate-data"), user.get("client-certificate"),
                                "client.crt")
            key = _materialise(certs, user.get("client-key-data"), user.get("client-key"), "client.key")
            if cert and key:
                self.context.load_cert_chain(cert, key)

    def __repr__(self) -> str:
        return f"Api({self.name})"

    def connection(self, timeout: float = 30) -> http.client.HTTPConnection:
        if self.https:
            return http.client.HTTPSConnection(self.host, self.port, timeout=timeout, context=self.context)
        return http.client.HTTPConnection(self.host, self.port, timeout=timeout)

    @staticmethod
    def url(path: str, query: Mapping[str, Any] | None = None) -> str:
        if not query:
            return path
        pairs = [(k, v) for k, vs in query.items() for v in (vs if isinstance(vs, list | tuple) else [vs])]
        return path + "?" + urllib.parse.urlencode(pairs)

    def request(self, method: str, path: str, body: Any = None, *, query: Mapping[str, Any] | None = None,
                content_type: str = "application/json", accept: str = "application/json",
                headers: Mapping[str, str] | None = None) -> Reply:
        data: bytes | None = None
        if body is not None:
            data = body.encode() if isinstance(body, str) else body if isinstance(body, bytes) else \
                json.dumps(body).encode()
        sent = {**self.headers, "Accept": accept, **(headers or {})}
        if data is not None:
            sent["Content-Type"] = content_type
        conn = self.connection()
        try:
            conn.request(method, self.url(path, query), body=data, headers=sent)
            response = conn.getresponse()
            return Reply(response.status, response.headers, response.read().decode())
        finally:
            conn.close()

    def get(self, path: str, **kwargs: Any) -> Reply:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, body: Any, **kwargs: Any) -> Reply:
        return self.request("POST", path, body, **kwargs)

    def put(self, path: str, body: Any, **kwargs: Any) -> Reply:
        return self.request("PUT", path, body, **kwargs)

    def patch(self, path: str, body: Any, content_type: str = MERGE, **kwargs: Any) -> Reply:
        return self.request("PATCH", path, body, content_type=content_type, **kwargs)

    def delete(self, path: str, body: Any = None, **kwargs: Any) -> Reply:
        return self.request("DELETE", path, body, **kwargs)

    def ok(self, method: str, path: str, body: Any = None, **kwargs: Any) -> JSON:
        """A request that must succeed (2xx): its body."""
        reply = self.request(method, path, body, **kwargs)
        assert 200 <= reply.status < 300, f"{self.name}: {method} {path} -> {reply.status} {reply.text[:2000]}"
        found: JSON = reply.body
        return found

    def watch(self, path: str, query: Mapping[str, Any], accept: str = "application/json") -> Watch:
        return Watch(self, path, query, accept)


@dataclass
class Watch:
    """A watch stream read on a thread: its status, headers and events as they arrive."""

    api: Api
    path: str
    query: Mapping[str, Any]
    accept: str = "application/json"
    status: int = 0
    events: list[JSON] = field(default_factory=list)
    ended: bool = False
    error: BaseException | None = None

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._conn = self.api.connection(timeout=60)
        self._conn.request("GET", Api.url(self.path, {**self.query, "watch": "true"}),
                           headers={**self.api.headers, "Accept": self.accept})
        self._response = self._conn.getresponse()
        self.status = self._response.status
        self._thread = threading.Thread(target=self._read, name=f"watch-{self.api.name}", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            while True:
                line = self._response.readline()
                if not line:
                    break
                if line.strip():
                    with self._lock:
                        self.events.append(json.loads(line))
        except Exception as exc:  # the stream cut by close(), or broken: what was read stays
            self.error = exc
        finally:
            self.ended = True

    def snapshot(self) -> list[JSON]:
        with self._lock:
            return list(self.events)

    def wait(self, predicate: Callable[[list[JSON]], bool], what: str, timeout: float = 20) -> list[JSON]:
        try:
            wait_for(lambda: predicate(self.snapshot()), timeout=timeout, interval=0.05,
                     what=f"{self.api.name}: {what}")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; events: {event_summary(self.snapshot())}") from None
        return self.snapshot()

    def wait_count(self, count: int, timeout: float = 20) -> list[JSON]:
        return self.wait(lambda events: len(events) >= count, f"{count} watch events", timeout)

    def wait_end(self, timeout: float = 20) -> list[JSON]:
        wait_for(lambda: self.ended, timeout=timeout, interval=0.05, what=f"{self.api.name}: the watch to end")
        return self.snapshot()

    def close(self) -> None:
        """Cut the stream (the reader thread sees its end), then close the connection."""
        try:
            if self._conn.sock is not None:
                self._conn.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._thread.join(10)
        self._conn.close()

    def __enter__(self) -> Watch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- normalisation -------------------------------------------------------------------------------

_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$")
_UID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_AGE = re.compile(r"^(\d+[smhdy])+$")
DROPPED = ("managedFields", "selfLink")


def normalise(value: Any, *, ages: bool = False) -> Any:
    """`value` with uids, timestamps, resourceVersions and generated name suffixes as placeholders."""
    if isinstance(value, Mapping):
        out: JSON = {}
        generate = value.get("generateName")
        for key, item in value.items():
            if key in DROPPED:
                continue
            if key in ("uid", "resourceVersion") and isinstance(item, str) and item:
                out[key] = f"<{key}>"
            elif key == "name" and isinstance(generate, str) and isinstance(item, str) \
                    and item.startswith(generate) and len(item) == len(generate) + 5:
                out[key] = generate + "<suffix>"
            elif key == "continue" and isinstance(item, str) and item:
                out[key] = "<continue>"
            else:
                out[key] = normalise(item, ages=ages)
        return out
    if isinstance(value, list):
        return [normalise(item, ages=ages) for item in value]
    if isinstance(value, str):
        if _TIME.match(value):
            return "<time>"
        if ages and _AGE.match(value):
            return "<age>"
        return _UID.sub("<uid>", value)
    return value


def names(items: Iterable[Mapping[str, Any]]) -> list[str]:
    return [item["metadata"]["name"] for item in items]


def event_summary(events: Iterable[Mapping[str, Any]]) -> list[tuple[str, str]]:
    """(type, object name) of watch events; a BOOKMARK or ERROR names what it carries instead."""
    summary = []
    for event in events:
        obj = event.get("object") or {}
        if event.get("type") == "ERROR":
            summary.append(("ERROR", f"{obj.get('code')} {obj.get('reason')}"))
        elif event.get("type") == "BOOKMARK":
            summary.append(("BOOKMARK", obj.get("kind", "")))
        else:
            summary.append((str(event.get("type")), obj.get("metadata", {}).get("name", "")))
    return summary


def differences(real: Any, emulated: Any, path: str = "") -> list[str]:
    """Where two JSON values differ, one line per leaf: `path: real=... emulator=...`."""
    if isinstance(real, Mapping) and isinstance(emulated, Mapping):
        found = []
        for key in list(real) + [k for k in emulated if k not in real]:
            where = f"{path}.{key}" if path else str(key)
            if key not in emulated:
                found.append(f"{where}: real={real[key]!r} emulator=<missing>")
            elif key not in real:
                found.append(f"{where}: real=<missing> emulator={emulated[key]!r}")
            else:
                found += differences(real[key], emulated[key], where)
        return found
    if isinstance(real, list) and isinstance(emulated, list) and len(real) == len(emulated):
        return [d for i, (a, b) in enumerate(zip(real, emulated, strict=True))
                for d in differences(a, b, f"{path}[{i}]")]
    return [] if real == emulated else [f"{path or '<root>'}: real={real!r} emulator={emulated!r}"]


def assert_same(real: Any, emulated: Any, what: str = "") -> None:
    """The emulator answered what the real server answered (after normalisation, done by the caller)."""
    found = differences(real, emulated)
    assert not found, (f"{what}: " if what else "") + "the emulator differs from kube-apiserver:\n  " + \
        "\n  ".join(d[:400] for d in found)

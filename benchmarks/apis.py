"""The API the benchmarks run against: the real control plane of `hack/cluster.sh`, or the project's emulator.

Each scenario phase gets a `PhaseApi`: the operator's side (testbed's `RealApi` or `EmulatorApi`: its
kubeconfig, its environment, its request counts) and the driver's (an `Endpoint` with the admin's
credentials), a Node registered for the phase, and a namespace of VMs that starts empty.

On the real API the benchmark has an identity of its own (the chart's RBAC rendered as release `lvo-bench`):
its operator's requests are told apart from those of test runs sharing the cluster by user name, and its VMs
live in the namespace `lvo-bench`, which the e2e tests' purge leaves alone (testbed.control_plane). What
an identity cannot keep apart is the server itself: tests that stop it (tests/e2e/test_connection_loss.py),
add and remove CRDs or load it. `--own-cluster` runs the benchmark on a control plane of its own instead
(hack/cluster.sh with another state directory and ports, no kubelet), stopped again after the run if the
run started it.
"""

from __future__ import annotations

import base64
import datetime
import json
import os
import ssl
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from prometheus_client.parser import text_string_to_metric_families

from libvirt_operator.api.constants import GROUP, PLURAL, VERSION
from testbed import Api, ControlPlane, EmulatorApi, RealApi

KINDS = ("real", "emulator")
BENCH_IDENTITY = "lvo-bench"
EMULATOR_NAMESPACE = "default"
REPO = Path(__file__).resolve().parents[1]
# hack/cluster.sh and ControlPlane read these: a second control plane beside the shared one (16443, 23790).
OWN_CLUSTER = {"LVO_CLUSTER_DIR": str(REPO / ".local" / "cluster-bench"), "LVO_APISERVER_PORT": "16444",
               "LVO_ETCD_PORT": "23820", "LVO_CLUSTER_NODE": "0"}


# A 429 (the CRD's storage re-initializing after a test sharing the server changed the CRD, or priority
# and fairness shedding load) is retried after the server's Retry-After, as Kubernetes clients do.
TOO_MANY_REQUESTS_TRIES = 30


def retry_after(header: str | None) -> float:
    """Seconds to wait before retrying a 429: its Retry-After (seconds), 1 without one, at most 5."""
    try:
        return min(5.0, max(0.1, float(header))) if header else 1.0
    except ValueError:
        return 1.0


def vm_path(namespace: str) -> str:
    return f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}"


@dataclass(frozen=True)
class Endpoint:
    """An API server as a kubeconfig describes it (URL, TLS, credential), for urllib and aiohttp."""

    url: str
    ssl: ssl.SSLContext | None
    headers: Mapping[str, str]

    @classmethod
    def from_kubeconfig(cls, path: Path) -> Endpoint:
        config: dict[str, Any] = yaml.safe_load(path.read_text())
        context = _named(config, "contexts", config["current-context"])
        cluster = _named(config, "clusters", context["cluster"])
        user = _named(config, "users", context["user"])
        url = str(cluster["server"]).rstrip("/")
        context_ssl: ssl.SSLContext | None = None
        if url.startswith("https:"):
            ca_data = cluster.get("certificate-authority-data")
            context_ssl = ssl.create_default_context(
                cafile=cluster.get("certificate-authority"),
                cadata=base64.b64decode(ca_data).decode() if ca_data else None)
            if cluster.get("insecure-skip-tls-verify"):
                context_ssl.check_hostname = False
                context_ssl.verify_mode = ssl.CERT_NONE
            _load_client_cert(context_ssl, user)
        headers = {"Authorization": f"Bearer {user['token']}"} if user.get("token") else {}
        return cls(url, context_ssl, headers)

    def call(self, method: str, path: str, body: Mapping[str, Any] | None = None, *, timeout: float = 30) -> Any:
        """Blocking: one request; the decoded JSON answer."""
        request = urllib.request.Request(self.url + path, method=method, headers={
            **self.headers, "Content-Type": "application/json"},
            data=json.dumps(body).encode() if body is not None else None)
        try:
            for attempt in range(TOO_MANY_REQUESTS_TRIES):
                try:
                    with urllib.request.urlopen(request, timeout=timeout, context=self.ssl) as resp:
                        return json.loads(resp.read() or b"{}")
                except urllib.error.HTTPError as exc:
                    if exc.code != 429 or attempt == TOO_MANY_REQUESTS_TRIES - 1:
                        raise
                    time.sleep(retry_after(exc.headers.get("Retry-After")))
        except urllib.error.URLError as exc:
            if isinstance(exc.reason, ConnectionRefusedError):  # not an HTTPError: nothing answered
                raise RuntimeError(f"{method} {self.url}{path}: the API server is gone (a test sharing the control "
                                   "plane may have stopped it; `hack/cluster.sh status`): the run is void") from exc
            raise

    def text(self, path: str, *, timeout: float = 30) -> str:
        """Blocking: a GET whose answer is text (/metrics)."""
        request = urllib.request.Request(self.url + path, headers=dict(self.headers))
        with urllib.request.urlopen(request, timeout=timeout, context=self.ssl) as resp:
            return str(resp.read().decode())

    def session(self, *, limit: int = 100) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(limit=limit, ssl=self.ssl if self.ssl is not None else True)
        return aiohttp.ClientSession(connector=connector, headers=dict(self.headers))


def _named(config: Mapping[str, Any], section: str, name: str) -> dict[str, Any]:
    for entry in config.get(section) or []:
        if entry["name"] == name:
            return dict(entry.get(section[:-1]) or {})
    raise KeyError(f"kubeconfig: no {section[:-1]} {name!r}")


def _load_client_cert(context: ssl.SSLContext, user: Mapping[str, Any]) -> None:
    if user.get("client-certificate"):
        context.load_cert_chain(user["client-certificate"], user["client-key"])
    elif user.get("client-certificate-data"):
        # The ssl module loads certificates from files only: written to a private directory, read, removed.
        with tempfile.TemporaryDirectory() as scratch:
            cert, key = Path(scratch) / "cert.pem", Path(scratch) / "key.pem"
            cert.write_bytes(base64.b64decode(user["client-certificate-data"]))
            key.write_bytes(base64.b64decode(user["client-key-data"]))
            context.load_cert_chain(cert, key)


@dataclass
class PhaseApi:
    """One scenario's API: `api` is what the operator gets, `admin` what the driver creates and watches with."""

    api: Api
    admin: Endpoint
    namespace: str  # where the phase's VMs live
    plane: ControlPlane | None  # the real control plane, or None (the emulator)

    @property
    def kubeconfig(self) -> Path:
        return self.api.kubeconfig

    def requests(self) -> dict[tuple[str, str], int]:
        """The operator's requests since the last reset (on the real API: its user's, from the audit log)."""
        return self.api.requests()

    def reset_counts(self) -> None:
        self.api.reset_counts()

    def audit_offset(self) -> int:
        return self.plane.audit_offset() if self.plane is not None else 0

    def server_seconds(self, since: int, verb: str, resource: str) -> list[float]:
        """On the real API: how long the API server itself took over each of the operator's ``verb resource``
        requests after audit offset ``since`` (request received to response complete); [] on the emulator.
        What the operator measures beyond that is its own time, the client's and the network's."""
        return [done - received for received, done in self.server_spans(since, verb, resource)]

    def server_spans(self, since: int, verb: str, resource: str) -> list[tuple[float, float]]:
        """On the real API: (received, response complete) of each of the operator's ``verb resource``
        requests after audit offset ``since``, as wall-clock times (time.time(): the API server runs on
        this machine), in the log's order; [] on the emulator."""
        if self.plane is None:
            return []
        user, kind = self.plane.user, resource.split("/")
        needle, spans = user.encode(), []
        for line, _end in self.plane.audit_lines(since):
            if needle not in line:
                continue
            entry = json.loads(line)
            ref = entry.get("objectRef") or {}
            if ((entry.get("user") or {}).get("username") == user and entry.get("verb") == verb
                    and entry.get("stage") == "ResponseComplete"
                    and [ref.get("resource"), *([ref["subresource"]] if ref.get("subresource") else [])] == kind):
                spans.append((_timestamp(entry["requestReceivedTimestamp"]), _timestamp(entry["stageTimestamp"])))
        return spans

    def request_bytes(self, verb: str, resource: str = PLURAL) -> tuple[float, float] | None:
        """On the real API: the API server's running (sum, count) of the request body bytes it received for
        ``verb`` on ``resource`` of this group, every user's and every subresource's together (its
        apiserver_request_body_size_bytes histogram); None on the emulator."""
        if self.plane is None:
            return None
        total, count = 0.0, 0.0
        labels = {"group": GROUP, "resource": resource, "verb": verb}
        for family in text_string_to_metric_families(self.admin.text("/metrics")):
            if family.name != "apiserver_request_body_size_bytes":
                continue
            for sample in family.samples:
                if all(sample.labels.get(k) == v for k, v in labels.items()):
                    if sample.name.endswith("_sum"):
                        total += sample.value
                    elif sample.name.endswith("_count"):
                        count += sample.value
        return total, count

    def vm_names(self) -> list[str]:
        listed = self.admin.call("GET", vm_path(self.namespace))
        return [str(item["metadata"]["name"]) for item in listed.get("items") or []]


class ApiChoice:
    """`--api real|emulator`: which API every scenario of one run uses."""

    def __init__(self, kind: str, *, own_cluster: bool = False) -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown API {kind!r}: one of {', '.join(KINDS)}")
        self.kind = kind
        self.own_cluster = own_cluster and kind == "real"
        self.plane: ControlPlane | None = None
        self._stop_after = False
        if kind == "real":
            if self.own_cluster:
                os.environ.update(OWN_CLUSTER)  # this process's, so cluster.sh and the operators see the same
            plane = ControlPlane(identity=BENCH_IDENTITY)
            self._stop_after = self.own_cluster and "kube-apiserver running" not in plane.cluster_sh("status")
            self.plane = plane.up()
        self.version = ""

    def close(self) -> None:
        """Stops the run's own control plane if the run started it (the shared one stays up)."""
        if self.plane is not None and self._stop_after:
            # One by one, not `down`: that also kills containerd shims and mounts by a path every instance
            # shares (/run/lvo-containerd), i.e. the node of the control plane the tests use.
            for component in ("kube-scheduler", "kube-controller-manager", "kube-apiserver", "etcd"):
                self.plane.cluster_sh("stop", component)

    def describe(self) -> str:
        if self.plane is None:
            return "API emulator (kube_emulator)"
        if not self.version:
            admin = Endpoint.from_kubeconfig(self.plane.admin_kubeconfig)
            self.version = str(admin.call("GET", "/version").get("gitVersion", "?"))
        return f"kube-apiserver {self.version} ({self.plane.url}{', own control plane' if self.own_cluster else ''})"

    @contextmanager
    def phase(self, workdir: Path, node: str, *more_nodes: str) -> Iterator[PhaseApi]:
        """The API for one scenario, with a Node named ``node`` (and one for each of ``more_nodes``); its VMs
        are gone when the block is left."""
        api: Api
        if self.plane is None:
            api, namespace = EmulatorApi(workdir), EMULATOR_NAMESPACE
        else:
            api, namespace = RealApi(workdir, self.plane, proxy=False), self.plane.namespace
        api.start()
        phase = PhaseApi(api, Endpoint.from_kubeconfig(api.admin_kubeconfig), namespace, self.plane)
        registered: list[str] = []
        try:
            if self.plane is not None:
                self.plane.purge_vms()  # what an interrupted run left behind
                _wait_empty(phase)
            for name in (node, *more_nodes):
                register_node(phase.admin, name)
                registered.append(name)
            yield phase
        finally:
            try:
                if self.plane is not None:  # the emulator forgets them when it stops
                    for name in registered:
                        phase.admin.call("DELETE", f"/api/v1/nodes/{name}")
            finally:
                api.stop()  # RealApi: purges the VMs
            if self.plane is not None:
                _wait_empty(phase)  # so that the next phase starts from an empty namespace


def _timestamp(text: str) -> float:
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def _wait_empty(phase: PhaseApi, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while names := phase.vm_names():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(names)} VMs still in namespace {phase.namespace} after the purge: {names[:5]}")
        time.sleep(0.2)


def register_node(admin: Endpoint, name: str) -> None:
    """Blocking: the Node a kubelet would have registered, with a complete nodeInfo (clients validate it)."""
    info = {"architecture": "amd64", "bootID": "bench", "containerRuntimeVersion": "none", "kernelVersion": "bench",
            "kubeProxyVersion": "", "kubeletVersion": "bench", "machineID": "bench", "operatingSystem": "linux",
            "osImage": "bench", "systemUUID": "bench"}
    body = {"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
            "status": {"nodeInfo": info,
                       "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady"}]}}
    admin.call("POST", "/api/v1/nodes", body)


@contextmanager
def process_env(env: Mapping[str, str]) -> Iterator[None]:
    """``env`` in this process's environment for the block: what an in-process operator reads there
    (POD_NAMESPACE: its Lease's namespace) is what an operator process gets from `operator_env()`."""
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


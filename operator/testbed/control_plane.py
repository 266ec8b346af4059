"""The real Kubernetes control plane of `hack/cluster.sh`, and the operator's identity on it.

`ControlPlane` (one per test session or benchmark run) starts the cluster, installs the CRD, and renders
the chart's own ServiceAccount and RBAC with Helm; the operator then authenticates with a token of that
ServiceAccount (`kubectl create token`), so the chart's ClusterRole is what allows or refuses its requests.

`RealApi` (one per test) is a `clients.Api` on it: the operator reaches the API server through a
`FaultProxy` of its own, and its requests are counted from the API server's audit log, by user name.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from testbed.faultproxy import FaultProxy

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "deploy" / "helm" / "libvirt-operator"
CRDS = REPO / "deploy" / "crds"
# A release of its own, so that tests which `helm install` the chart (release "lvo") never collide with it.
IDENTITY_RELEASE = "lvo-e2e"
IDENTITY_NAMESPACE = "lvo-e2e"
IDENTITY_KINDS = ("ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding")
# On the namespace of an identity other than the e2e tests' (a benchmark run sharing the cluster with test
# runs): its VMs live there, and the e2e tests' purge leaves them alone.
RESERVED_LABEL = "testbed.libvirt-operator.dev/reserved-by"


def _tool(name: str) -> str:
    local = REPO / ".venv" / "bin" / name
    return str(local) if local.exists() else name


class ControlPlane:
    def __init__(self, state_dir: Path | None = None, *, identity: str = IDENTITY_RELEASE) -> None:
        self.state = state_dir or Path(os.environ.get("LVO_CLUSTER_DIR", REPO / ".local" / "cluster"))
        self.admin_kubeconfig = self.state / "kubeconfig"
        self.ca_file = self.state / "pki" / "ca.crt"
        self.audit_log = self.state / "logs" / "audit.log"
        self._rotated: tuple[int | None, list[tuple[Path, int]]] | None = None  # (audit.log's inode, rotated files)
        self.port = int(os.environ.get("LVO_APISERVER_PORT", "16443"))
        self.url = f"https://127.0.0.1:{self.port}"
        # The Helm release and namespace of the operator's identity (its own user name in the audit log).
        self.release = identity
        self.namespace = IDENTITY_NAMESPACE if identity == IDENTITY_RELEASE else identity
        self.service_account = ""
        self._token = ""

    # --- the cluster ---------------------------------------------------------------------------------

    def cluster_sh(self, *args: str, timeout: float = 3600) -> str:
        done = subprocess.run(["bash", str(REPO / "hack" / "cluster.sh"), *args], capture_output=True, text=True,
                              timeout=timeout)
        if done.returncode != 0:
            raise RuntimeError(f"hack/cluster.sh {' '.join(args)} failed ({done.returncode}):\n"
                               f"{done.stderr[-4000:]}{done.stdout[-2000:]}")
        return done.stdout

    def up(self) -> ControlPlane:
        self.cluster_sh("up")
        self.install()
        return self

    def kubectl(self, *args: str, input_text: str | None = None, check: bool = True) -> str:
        done = subprocess.run([_tool("kubectl"), "--kubeconfig", str(self.admin_kubeconfig), *args],
                              input=input_text, capture_output=True, text=True, timeout=120)
        if check and done.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)} failed ({done.returncode}): {done.stderr}{done.stdout}")
        return done.stdout

    def install(self) -> None:
        """The CRD, and the chart's ServiceAccount and RBAC as `helm template` renders them."""
        self.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRDS))
        for crd in CRDS.glob("*.yaml"):
            name = yaml.safe_load(crd.read_text())["metadata"]["name"]
            self.kubectl("wait", "--for=condition=Established", "--timeout=60s", f"crd/{name}")
        rendered = subprocess.run([_tool("helm"), "template", self.release, str(CHART), "--namespace",
                                   self.namespace], capture_output=True, text=True, timeout=120, check=True).stdout
        docs = [d for d in yaml.safe_load_all(rendered) if d and d.get("kind") in IDENTITY_KINDS]
        accounts = [d["metadata"]["name"] for d in docs if d["kind"] == "ServiceAccount"]
        assert len(accounts) == 1, f"the chart renders {len(accounts)} ServiceAccounts"
        self.service_account = accounts[0]
        if self.kubectl("get", "namespace", self.namespace, "--ignore-not-found", "-o", "name") == "":
            self.kubectl("create", "namespace", self.namespace)
        if self.reserved:
            self.kubectl("label", "namespace", self.namespace, f"{RESERVED_LABEL}={self.release}", "--overwrite")
        self.kubectl("apply", "-f", "-", input_text=json.dumps({"apiVersion": "v1", "kind": "List", "items": docs}))

    @property
    def reserved(self) -> bool:
        """Whether this identity keeps its VMs to its own namespace (every identity but the e2e tests')."""
        return self.namespace != IDENTITY_NAMESPACE

    @property
    def user(self) -> str:
        """The operator's user name as the API server sees it (RBAC, audit log)."""
        return f"system:serviceaccount:{self.namespace}:{self.service_account}"

    def token(self) -> str:
        if not self._token:
            self._token = self.kubectl("create", "token", self.service_account, "-n", self.namespace,
                                       "--duration=24h").strip()
        return self._token

    def can_i(self, verb: str, resource: str, *, namespace: str | None = None) -> bool:
        args = ["auth", "can-i", verb, resource, f"--as={self.user}"]
        args += ["-n", namespace] if namespace else ["--all-namespaces"]
        return self.kubectl(*args, check=False).strip() == "yes"

    def operator_kubeconfig(self, path: Path, server: str) -> Path:
        """A kubeconfig of the operator's ServiceAccount token: to the proxy (plain HTTP on loopback) or, given
        the API server's own URL, straight to it over TLS."""
        cluster: dict[str, str] = {"server": server}
        if server.startswith("https:"):
            cluster["certificate-authority"] = str(self.ca_file)
        config = {
            "apiVersion": "v1", "kind": "Config", "current-context": "operator",
            "clusters": [{"name": "local", "cluster": cluster}],
            "users": [{"name": "operator", "user": {"token": self.token()}}],
            "contexts": [{"name": "operator", "context": {"cluster": "local", "user": "operator"}}],
        }
        path.write_text(yaml.safe_dump(config))
        path.chmod(0o600)
        return path

    def audit_offset(self) -> int:
        """The audit log's end, as a position across its rotated files and the current one (see
        `audit_lines`): kube-apiserver renames audit.log to audit-<time>.log every 100 MB (its
        `--audit-log-maxsize 0` is lumberjack's default), which a full benchmark run passes."""
        return sum(size for _path, size in self._audit_files())

    def _audit_files(self) -> list[tuple[Path, int]]:
        """The rotated files oldest first (their names sort by time), then audit.log; with their sizes.
        The rotated ones are listed again only when audit.log is a new file (a rotation): a benchmark polls
        this while its operator works, on the same cores."""
        try:
            current = self.audit_log.stat()
        except FileNotFoundError:
            current = None
        inode = current.st_ino if current is not None else None
        if self._rotated is None or self._rotated[0] != inode:
            rotated = []
            for path in sorted(self.audit_log.parent.glob("audit-*.log")):
                try:
                    rotated.append((path, path.stat().st_size))  # never written again
                except FileNotFoundError:
                    continue
            self._rotated = (inode, rotated)
        return [*self._rotated[1], *([(self.audit_log, current.st_size)] if current is not None else [])]

    def audit_lines(self, offset: int) -> Iterator[tuple[bytes, int]]:
        """The complete lines after position ``offset`` (of `audit_offset`), each with the position after it.
        Rotated files never change, so a position stays valid across a rotation."""
        base = 0
        for path, size in self._audit_files():
            if offset >= base + size and path != self.audit_log:
                base += size
                continue
            with open(path, "rb") as log:
                log.seek(max(offset - base, 0))
                position = base + max(offset - base, 0)
                for line in log:
                    if not line.endswith(b"\n"):
                        return  # an entry still being written
                    position += len(line)
                    yield line, position
            base += size

    def requests_since(self, offset: int, user: str | None = None) -> Counter[tuple[str, str]]:
        """Requests per (verb, resource[/subresource]) of one user, from the audit log after ``offset``."""
        return Counter(key for key, _code in self._audited(offset, user or self.user).values())

    def refused_since(self, offset: int, user: str | None = None) -> list[tuple[str, str]]:
        """The requests of one user that the server's authorizer refused (403), from the audit log."""
        return sorted(key for key, code in self._audited(offset, user or self.user).values() if code == 403)

    def _audited(self, offset: int, user: str) -> dict[str, tuple[tuple[str, str], int]]:
        """{auditID: ((verb, resource), response code)} of one user's resource requests after ``offset``.
        A watch has two entries (ResponseStarted, ResponseComplete) under one ID: it counts once."""
        seen: dict[str, tuple[tuple[str, str], int]] = {}
        self.read_audit(offset, user, seen)
        return seen

    def read_audit(self, offset: int, user: str, seen: dict[str, tuple[tuple[str, str], int]]) -> int:
        """Adds one user's entries after ``offset`` to ``seen`` (see `_audited`); returns the offset after the
        last complete entry, from where the next call goes on (a reader polling often parses each line once)."""
        needle, end = user.encode(), offset
        for line, end in self.audit_lines(offset):  # noqa: B007 (the last end is returned)
            if needle not in line:  # most lines are other users': skipped without parsing them
                continue
            try:
                entry: dict[str, Any] = json.loads(line)
            except ValueError:
                continue
            if (entry.get("user") or {}).get("username") != user:
                continue
            ref = entry.get("objectRef") or {}
            if not ref.get("resource"):
                continue
            resource = ref["resource"] + (f"/{ref['subresource']}" if ref.get("subresource") else "")
            code = int((entry.get("responseStatus") or {}).get("code") or 0)
            seen[str(entry.get("auditID"))] = ((str(entry.get("verb")), resource), code)
        return end

    def request_uris_since(self, offset: int, user: str | None = None) -> list[tuple[str, str, str]]:
        """(verb, resource, requestURI) of one user's resource requests in the audit log after ``offset``
        (one per request: the stages of a request share its auditID)."""
        needle = (user or self.user).encode()
        found: dict[str, tuple[str, str, str]] = {}
        for line, _end in self.audit_lines(offset):
            if needle not in line:
                continue
            try:
                entry: dict[str, Any] = json.loads(line)
            except ValueError:
                continue
            ref = entry.get("objectRef") or {}
            if (entry.get("user") or {}).get("username") != (user or self.user) or not ref.get("resource"):
                continue
            found[str(entry.get("auditID"))] = (str(entry.get("verb")), str(ref["resource"]),
                                                str(entry.get("requestURI", "")))
        return list(found.values())

    @property
    def node_name(self) -> str:
        """The node hack/cluster.sh runs a kubelet for ("" when started without one)."""
        if os.environ.get("LVO_CLUSTER_NODE", "1") != "1":
            return ""
        return os.environ.get("LVO_NODE_NAME", "lvo-node")

    def load_image(self, archive: Path) -> str:
        """Import an OCI archive into the node's containerd (what a pull would do); returns its reference."""
        socket = self.cluster_sh("containerd-socket").strip()
        out = subprocess.run(["ctr", "-a", socket, "-n", "k8s.io", "images", "import", str(archive)],
                             capture_output=True, text=True, timeout=600, check=True).stdout
        refs = [line.split()[1] for line in out.splitlines() if line.startswith("unpacking ")]
        named = [r for r in refs if not r.startswith("sha256:")]
        assert named, f"{archive}: no named image in it ({out!r})"
        return named[0]

    def stop_apiserver(self) -> None:
        """The API server offline: its process stopped (etcd keeps the data)."""
        self.cluster_sh("stop", "kube-apiserver")

    def start_apiserver(self) -> None:
        self.cluster_sh("up")

    def purge_vms(self, node_prefix: str | None = None) -> None:
        """This identity's VirtualMachines removed, finalizers and all: the next test starts from an empty API.

        A reserved identity's are those of its namespace; the e2e tests' are those of every other namespace,
        and only those of nodes named ``node_prefix``... when it is given."""
        if self.reserved:
            listed = json.loads(self.kubectl("get", "lvm", "-n", self.namespace, "-o", "json"))
            others: set[str] = set()
        else:
            listed = json.loads(self.kubectl("get", "lvm", "-A", "-o", "json"))
            others = {name.split("/", 1)[1] for name in
                      self.kubectl("get", "namespaces", "-l", RESERVED_LABEL, "-o", "name").split()}
        vms = [vm for vm in listed.get("items") or [] if vm["metadata"]["namespace"] not in others
               and str((vm.get("spec") or {}).get("nodeName", "")).startswith(node_prefix or "")]
        if not vms:
            return
        # Deleted first: no finalizer can be added to an object being deleted, so none comes back (from an
        # operator still running) once removed. One kubectl per step, not per VM: a benchmark leaves 1000.
        self.kubectl("delete", "-f", "-", "--wait=false", "--ignore-not-found", check=False,
                     input_text=json.dumps({"apiVersion": "v1", "kind": "List", "items": vms}))
        held = [vm for vm in vms if vm["metadata"].get("finalizers")]
        if held:
            self.kubectl("patch", "-f", "-", "--type=merge", "-p", '{"metadata":{"finalizers":null}}', check=False,
                         input_text=json.dumps({"apiVersion": "v1", "kind": "List", "items": held}))


class RealApi:
    """One test's view of the real control plane (a `clients.Api`).

    ``proxy=False`` (the benchmarks): the operator talks to the API server directly, as in production, so no
    proxy in the driver's process adds its cost to what is measured; faults cannot be injected then."""

    kind = "real"

    def __init__(self, workdir: Path, plane: ControlPlane, *, proxy: bool = True,
                 node_prefix: str | None = None) -> None:
        self.workdir = workdir
        self.plane = plane
        self.node_prefix = node_prefix  # whose VMs stop() purges (None: all of this identity's)
        self.admin_kubeconfig = plane.admin_kubeconfig
        self.kubeconfig = workdir / "operator.kubeconfig"
        self.proxy = FaultProxy(plane.url, str(plane.ca_file)) if proxy else None
        self.port = 0
        self._offset = 0
        self._begin = 0
        self._seen: dict[str, tuple[tuple[str, str], int]] = {}
        self._counts: Counter[tuple[str, str]] = Counter()

    def start(self) -> None:
        if self.proxy is None:
            self.port = self.plane.port
            self.plane.operator_kubeconfig(self.kubeconfig, self.plane.url)
        else:
            self.proxy.start()
            self.port = self.proxy.port
            self.plane.operator_kubeconfig(self.kubeconfig, f"http://127.0.0.1:{self.port}")
        self.reset_counts()

    def _proxy(self) -> FaultProxy:
        if self.proxy is None:
            raise RuntimeError("this RealApi has no fault proxy (proxy=False)")
        return self.proxy

    def operator_env(self) -> dict[str, str]:
        # The chart gives the operator's pod its namespace through the downward API; its Leases live there.
        return {"POD_NAMESPACE": self.plane.namespace}

    def requests(self) -> dict[tuple[str, str], int]:
        # Read on from where the last call stopped: benchmarks poll this while the log grows by thousands.
        known = len(self._seen)
        self._offset = self.plane.read_audit(self._offset, self.plane.user, self._seen)
        # Counted as they come (a watch's second entry updates its first: no new key), not over all again.
        self._counts.update(key for key, _code in itertools.islice(self._seen.values(), known, None))
        return dict(self._counts)

    def reset_counts(self) -> None:
        self._offset = self.plane.audit_offset()
        self._begin = self._offset
        self._seen = {}
        self._counts = Counter()

    def request_uris(self) -> list[tuple[str, str, str]]:
        """(verb, resource, requestURI) of the operators' requests since start() / reset_counts()."""
        return self.plane.request_uris_since(self._begin)

    def inject_fault(self, *, status: int, verb: str | None = None, resource: str | None = None,
                     count: int = 1) -> None:
        self._proxy().inject_fault(status=status, verb=verb, resource=resource, count=count)

    def streaming(self, verb: str, resource: str) -> int:
        """This API's own open streams of (verb, resource): its operator's, not the identity's (faultproxy.py)."""
        return self._proxy().streaming(verb, resource)

    def reset_connections(self) -> None:
        """The proxy aborts every client connection it is serving (a network fault, from the proxy's side)."""
        self._proxy().reset()

    def freeze(self) -> None:
        self._proxy().freeze()

    def thaw(self) -> None:
        self._proxy().thaw()

    def stop(self) -> None:
        if self.proxy is not None:
            self.proxy.stop()
        self.plane.purge_vms(self.node_prefix)

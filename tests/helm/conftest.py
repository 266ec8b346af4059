"""Fixtures of the Helm chart's tests: the real helm binary rendering deploy/helm/libvirt-operator."""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REPO, find_tool

CHART = REPO / "deploy" / "helm" / "libvirt-operator"
RELEASE = "lvo"
NAMESPACE = "libvirt-system"
Manifest = dict[str, Any]


def merged(defaults: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Values as Helm coalesces them: maps merged key by key, a null removes a default key."""
    result = dict(defaults)
    for key, value in overrides.items():
        if value is None:
            result.pop(key, None)
        elif isinstance(value, Mapping) and isinstance(result.get(key), Mapping):
            result[key] = merged(result[key], value)
        else:
            result[key] = value
    return result


@dataclass
class Rendered:
    """The objects of one `helm template` and the values they were rendered from, with lookups by kind."""

    docs: list[Manifest]
    values: dict[str, Any]

    def kinds(self) -> list[str]:
        return sorted(str(doc["kind"]) for doc in self.docs)

    def all(self, kind: str) -> list[Manifest]:
        return [doc for doc in self.docs if doc["kind"] == kind]

    def one(self, kind: str) -> Manifest:
        found = self.all(kind)
        assert len(found) == 1, f"expected one {kind}, got {len(found)} (kinds: {self.kinds()})"
        return found[0]

    @property
    def pod(self) -> Manifest:
        spec: Manifest = self.one("DaemonSet")["spec"]["template"]["spec"]
        return spec

    @property
    def container(self) -> Manifest:
        containers: list[Manifest] = self.pod["containers"]
        assert [c["name"] for c in containers] == ["operator"]
        return containers[0]

    def args(self) -> dict[str, str | None]:
        """The container's flags: `--flag=value` as {flag: value}, a bare `--flag` as {flag: None}."""
        parsed: dict[str, str | None] = {}
        for arg in self.container["args"]:
            assert isinstance(arg, str) and arg.startswith("--"), f"not a flag: {arg!r}"
            flag, sep, value = arg.partition("=")
            parsed[flag] = value if sep else None
        return parsed

    def env(self) -> dict[str, Manifest]:
        return {e["name"]: e for e in self.container.get("env", [])}

    def container_port(self, name_or_number: str | int) -> int:
        """A port as a probe or Service names it, resolved against the container's ports."""
        for port in self.container["ports"]:
            if name_or_number in (port["name"], port["containerPort"]):
                return int(port["containerPort"])
        raise AssertionError(f"no container port {name_or_number!r} in {self.container['ports']}")


class Helm:
    """The helm binary with its own (empty) config and cache directories, so that nothing outside leaks in."""

    def __init__(self, binary: str, home: Path) -> None:
        self.binary = binary
        self.env = dict(os.environ, HELM_CACHE_HOME=str(home / "cache"), HELM_CONFIG_HOME=str(home / "config"),
                        HELM_DATA_HOME=str(home / "data"))
        self.workdir = home

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([self.binary, *args], capture_output=True, text=True, env=self.env, timeout=60)
        if check and done.returncode != 0:
            raise AssertionError(f"helm {' '.join(args)} failed ({done.returncode}):\n{done.stderr}{done.stdout}")
        return done

    def values_file(self, values: Mapping[str, Any]) -> Path:
        fd, name = tempfile.mkstemp(prefix="values-", suffix=".yaml", dir=self.workdir)
        with os.fdopen(fd, "w") as handle:
            yaml.safe_dump(dict(values), handle)
        return Path(name)

    def _template_args(self, values: Mapping[str, Any] | None, extra: Sequence[str]) -> list[str]:
        args = ["template", RELEASE, str(CHART), "--namespace", NAMESPACE, *extra]
        if values:
            args += ["--values", str(self.values_file(values))]
        return args

    def template(self, values: Mapping[str, Any] | None = None, *extra: str) -> Rendered:
        out = self.run(*self._template_args(values, extra)).stdout
        defaults = yaml.safe_load((CHART / "values.yaml").read_text())
        return Rendered([doc for doc in yaml.safe_load_all(out) if doc], merged(defaults, values or {}))

    def template_error(self, values: Mapping[str, Any] | None = None, *extra: str) -> str:
        """helm's complaint about values it must refuse (the test fails if helm accepts them)."""
        done = self.run(*self._template_args(values, extra), check=False)
        assert done.returncode != 0, f"helm accepted values it should refuse: {values} {extra}"
        return done.stderr


@pytest.fixture(scope="session")
def helm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Helm]:
    binary = find_tool("helm")
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("helm not found: hack/setup.sh installs it into .venv/bin")
        pytest.skip("helm not found in .venv/bin or on PATH (hack/setup.sh installs helm v4 there)")
    yield Helm(binary, tmp_path_factory.mktemp("helm"))


@pytest.fixture(scope="session")
def default_render(helm: Helm) -> Rendered:
    return helm.template()

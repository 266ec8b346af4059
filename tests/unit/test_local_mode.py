"""Local mode's choices before anything starts: where each node keeps its state, what --fresh does."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from libvirt_operator import cli, local
from tests.emulator.conftest import EmulatorThread


@pytest.fixture
def run_dev_calls(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """`libvirt-operator dev` up to the point where it would start the emulator."""
    calls: list[dict[str, Any]] = []

    async def fake_run_dev(settings: Any, **kwargs: Any) -> None:
        calls.append({"settings": settings, **kwargs})

    monkeypatch.setattr(local, "run_dev", fake_run_dev)
    return calls


def test_each_node_name_has_a_local_state_directory_of_its_own() -> None:
    one, two = local.node_state_dir("node-one"), local.node_state_dir("node-two")
    assert one != two and one.parent == two.parent
    assert (one.name, two.name) == ("node-one", "node-two")


@pytest.mark.parametrize("name", ["../etc", "a/b", "", "UPPER", "."])
def test_a_node_name_that_is_no_dns_subdomain_cannot_name_a_state_directory(name: str) -> None:
    with pytest.raises(ValueError, match="DNS-1123"):
        local.node_state_dir(name)


def test_dev_keeps_the_api_state_in_the_node_directory(run_dev_calls: list[dict[str, Any]], tmp_path: Path) -> None:
    assert cli.main(["dev", "--kubeconfig", str(tmp_path / "kc"), "--node-name", "node-x"]) == 0
    assert run_dev_calls[0]["state_file"] == local.node_state_dir("node-x") / "api-state.json"
    assert run_dev_calls[0]["fresh"] is False


def test_dev_puts_images_and_disks_under_the_node_directory_unless_given(
        run_dev_calls: list[dict[str, Any]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LIBVIRT_OPERATOR_IMAGE_DIR", raising=False)
    monkeypatch.delenv("LIBVIRT_OPERATOR_STORAGE_DIR", raising=False)
    cli.main(["dev", "--kubeconfig", str(tmp_path / "kc"), "--node-name", "node-x"])
    monkeypatch.setenv("LIBVIRT_OPERATOR_STORAGE_DIR", str(tmp_path / "env-disks"))
    cli.main(["dev", "--kubeconfig", str(tmp_path / "kc"), "--node-name", "node-y", "--image-dir",
              str(tmp_path / "flag-images")])
    first, second = (c["settings"] for c in run_dev_calls)
    node_x = local.node_state_dir("node-x")
    assert (first.image_dir, first.storage_dir) == (node_x / "images", node_x / "disks")
    assert (second.image_dir, second.storage_dir) == (tmp_path / "flag-images", tmp_path / "env-disks")


def test_cluster_identity_names_one_api_and_survives_its_restart(tmp_path: Path) -> None:
    def identity_of(state_file: Path | None) -> str:
        server = EmulatorThread(state_file=state_file)
        try:
            server.call(server.emulator.write_kubeconfig, tmp_path / "kubeconfig")
            return local.cluster_identity(tmp_path / "kubeconfig")
        finally:
            server.close()

    kept = identity_of(tmp_path / "api-state.json")
    assert identity_of(tmp_path / "api-state.json") == kept
    assert identity_of(None) != kept


def test_dev_api_only_keeps_nothing_unless_given_a_state_file(run_dev_calls: list[dict[str, Any]],
                                                              tmp_path: Path) -> None:
    cli.main(["dev", "--api-only", "--kubeconfig", str(tmp_path / "kc")])
    cli.main(["dev", "--api-only", "--kubeconfig", str(tmp_path / "kc"), "--state-file", str(tmp_path / "s.json"),
              "--fresh"])
    assert [(c["state_file"], c["fresh"]) for c in run_dev_calls] == [(None, False), (tmp_path / "s.json", True)]


def test_dev_refuses_a_node_name_that_cannot_name_a_directory(run_dev_calls: list[dict[str, Any]],
                                                              tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="DNS-1123"):
        cli.main(["dev", "--kubeconfig", str(tmp_path / "kc"), "--node-name", "../up"])
    assert run_dev_calls == []


def test_fresh_sets_the_previous_state_aside_instead_of_deleting_it(tmp_path: Path) -> None:
    state = tmp_path / "api-state.json"
    assert local.set_aside(state) is None
    state.write_text("old state")
    previous = local.set_aside(state)
    assert previous == tmp_path / "api-state.json.previous"
    assert previous.read_text() == "old state" and not state.exists()

"""`libvirt-operator run --help` and `dev --help` as a new user reads them (issue 17)."""

from __future__ import annotations

import dataclasses
import re

import pytest

from libvirt_operator import cli
from libvirt_operator.settings import _OPTIONS, Settings, default_text, env_name_for


def _help(capsys: pytest.CaptureFixture[str], command: str) -> str:
    with pytest.raises(SystemExit):
        cli.main([command, "--help"])
    return " ".join(capsys.readouterr().out.split())  # argparse wraps lines


def _option_help(text: str, flag: str) -> str:
    """The help of one option: from its flag to the next option's."""
    match = re.search(rf"(?:^| ){re.escape(flag)}(?:,| [A-Z_]+ )(.*?)(?= --[a-z][-a-z]* (?:[A-Z_]+ |,|--)|$)", text)
    assert match is not None, f"{flag} not in the help"
    return match.group(1)


@pytest.mark.parametrize("command", ["run", "dev"])
def test_every_flag_names_its_environment_variable_once(capsys: pytest.CaptureFixture[str], command: str) -> None:
    text = _help(capsys, command)
    for flag, _env, name, _kind, _help_text in _OPTIONS:
        option = _option_help(text, flag)
        env = env_name_for(name)
        assert option.count(f"[env {env}]") == 1, (flag, option)
        assert option.count(env) == 1, (flag, option)  # "(env NODE_NAME too) [env NODE_NAME]" was shown


def test_run_help_shows_every_default(capsys: pytest.CaptureFixture[str]) -> None:
    text = _help(capsys, "run")
    defaults = Settings()
    for flag, _env, name, _kind, _help_text in _OPTIONS:
        shown = default_text(name, getattr(defaults, name))
        assert f"(default: {shown})" in _option_help(text, flag), flag
    assert "(default: 60)" in _option_help(text, "--shutdown-timeout")
    assert "(default: in-cluster config)" in _option_help(text, "--kubeconfig")
    assert "(default: all namespaces)" in _option_help(text, "--namespace")
    assert "(default: on)" in _option_help(text, "--resume-guests-on-host-boot")
    assert "(default: off)" in _option_help(text, "--delete-orphan-disks")


def test_dev_help_says_the_kubeconfig_is_written_and_where_local_mode_keeps_its_files(
        capsys: pytest.CaptureFixture[str]) -> None:
    text = _help(capsys, "dev")
    kubeconfig = _option_help(text, "--kubeconfig")
    assert "in-cluster" not in kubeconfig
    assert "written" in kubeconfig and "required" in kubeconfig
    assert "<node name>/images" in _option_help(text, "--image-dir")
    assert "<node name>/disks" in _option_help(text, "--storage-dir")
    assert "test:///default" in _option_help(text, "--libvirt-uri")
    assert "(default: 60)" in _option_help(text, "--shutdown-timeout")  # the rest as for run


def test_every_setting_has_a_flag() -> None:
    flagged = {opt[2] for opt in _OPTIONS}
    internal = {"keepalive_interval", "keepalive_count", "extra"}
    assert {f.name for f in dataclasses.fields(Settings)} - internal == flagged

"""hack/image.sh's content hash (the image's cache key and tag) covers every file that goes into the image.

Nothing is built: `hack/image.sh inputs` and `hack/image.sh hash` need neither podman nor a network.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "hack" / "image.sh"
# What .dockerignore excludes below the paths it lets through (its lines other than `*` and `!...`).
EXCLUDED_NAMES = re.compile(r"^(__pycache__|.*\.py[co]|.*\.egg-info)$")


def _run(root: Path, *args: str) -> str:
    return subprocess.run(["bash", str(root / "hack" / "image.sh"), *args], check=True, capture_output=True,
                          text=True, timeout=60).stdout


def _inputs(root: Path = ROOT) -> list[str]:
    return _run(root, "inputs").splitlines()


def _copied_sources() -> list[str]:
    """The sources of the Dockerfile's COPY instructions from the build context (not --from=stage)."""
    sources = []
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        if line.startswith("COPY ") and "--from=" not in line:
            *args, _dest = line.split()[1:]
            sources += [a for a in args if not a.startswith("--")]
    return sources


def _files_under(path: str) -> list[str]:
    """Every file (or symlink) the build context has at or below path, minus what .dockerignore excludes."""
    top = ROOT / path
    if not top.is_dir() or top.is_symlink():
        return [path.rstrip("/")]
    found = []
    for dirpath, dirnames, filenames in os.walk(top):
        dirnames[:] = [d for d in dirnames if not EXCLUDED_NAMES.match(d)]
        for name in filenames + [d for d in dirnames if (Path(dirpath) / d).is_symlink()]:
            if not EXCLUDED_NAMES.match(name):
                found.append(str((Path(dirpath) / name).relative_to(ROOT)))
    return found


def test_the_hash_covers_every_file_the_dockerfile_copies() -> None:
    sources = _copied_sources()
    # The Dockerfile copies the project (a parsing slip must not pass silently).
    assert {"pyproject.toml", "README.md", "operator/", "deploy/crds/"} <= set(sources)
    inputs = set(_inputs())
    for source in sources:
        files = _files_under(source)
        assert files, source
        missing = sorted(set(files) - inputs)
        assert not missing, f"COPY {source}: not in hack/image.sh's hash: {missing}"
    # And what decides how they are built.
    assert {"Dockerfile", ".dockerignore", "hack/image.sh"} <= inputs
    # Never what .dockerignore keeps out of the build context.
    assert not [f for f in inputs if any(EXCLUDED_NAMES.match(part) for part in Path(f).parts)]
    assert not [f for f in inputs if f.startswith(("tests/", ".local/", ".venv/"))]


def test_the_script_excludes_what_dockerignore_excludes() -> None:
    lines = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    excluded = [line.removeprefix("**/") for line in lines if line != "*" and not line.startswith("!")]
    script = SCRIPT.read_text()
    arrays = " ".join(re.findall(r"^EXCLUDED_(?:DIRS|FILES)=\((.*)\)$", script, re.M))
    patterns = {p.strip("'\"") for p in arrays.split()}
    assert set(excluded) == patterns, "hack/image.sh's EXCLUDED_DIRS/EXCLUDED_FILES must match .dockerignore"
    for pattern in patterns:
        assert EXCLUDED_NAMES.match(pattern.replace("[co]", "c")), pattern  # and this test's own list


@pytest.fixture
def copy(tmp_path: Path) -> Path:
    """A copy of exactly the inputs, as hack/image.sh stages its build context."""
    for name in _inputs():
        source, target = ROOT / name, tmp_path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_symlink():
            target.symlink_to(os.readlink(source))
        else:
            shutil.copy2(source, target)
    return tmp_path


def test_the_hash_changes_with_every_input_and_nothing_else(copy: Path) -> None:
    original = _run(copy, "hash").strip()
    assert re.fullmatch(r"[0-9a-f]{12}", original)
    assert _run(ROOT, "hash").strip() == original  # the copy hashes like the checkout: nothing else counts
    assert _inputs(copy) == _inputs()

    # One file of each COPY source, and the files that decide how they are built.
    samples = ["Dockerfile", ".dockerignore", "hack/image.sh"]
    samples += [next(f for f in sorted(_files_under(s)) if not (ROOT / f).is_symlink()) for s in _copied_sources()]
    for name in samples:
        path = copy / name
        content = path.read_bytes()
        path.write_bytes(content + b"\n")
        assert _run(copy, "hash").strip() != original, f"{name}: an edit does not change the hash"
        path.write_bytes(content)
        os.utime(path, (0, 0))  # times are not content
        assert _run(copy, "hash").strip() == original, name

    mode = (copy / "pyproject.toml").stat().st_mode
    (copy / "pyproject.toml").chmod(mode | 0o111)  # modes go into the image
    assert _run(copy, "hash").strip() != original
    (copy / "pyproject.toml").chmod(mode)

    (copy / "operator" / "new_module.py").write_text("X = 1\n")  # a new file of the context counts
    assert _run(copy, "hash").strip() != original
    (copy / "operator" / "new_module.py").unlink()

    # What .dockerignore keeps out of the build context does not.
    (copy / "operator" / "__pycache__").mkdir()
    (copy / "operator" / "__pycache__" / "x.cpython-311.pyc").write_bytes(b"\0")
    (copy / "operator" / "stray.pyc").write_bytes(b"\0")
    (copy / "operator" / "x.egg-info").mkdir()
    (copy / "operator" / "x.egg-info" / "PKG-INFO").write_text("x")
    (copy / "tests").mkdir()
    (copy / "tests" / "test_x.py").write_text("")
    (copy / "deploy" / "helm").mkdir()
    (copy / "deploy" / "helm" / "values.yaml").write_text("")
    assert _run(copy, "hash").strip() == original


def test_the_image_keeps_the_asyncio_client_the_operator_uses() -> None:
    # Until 2026-12-01 the Dockerfile removed kubernetes/aio (68 MB) as unused; the operator's API access
    # (kube/client.py, kube/lease.py) now is kubernetes.aio, so the image must keep it.
    assert "kubernetes/aio" not in (ROOT / "Dockerfile").read_text()
    users = sorted(str(p.relative_to(ROOT / "operator")) for p in (ROOT / "operator" / "libvirt_operator").rglob("*.py")
                   if re.search(r"^import kubernetes\.aio\b", p.read_text(), re.MULTILINE))
    assert users == ["libvirt_operator/kube/client.py", "libvirt_operator/kube/lease.py"]

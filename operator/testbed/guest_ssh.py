"""SSH into a test's real guest through its user-mode port forward on 127.0.0.1 (the image's user debian)."""

from __future__ import annotations

import subprocess
from pathlib import Path


def guest_ssh(key: Path, port: int, command: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    """``command`` in the guest with ``key``; no host key kept (every guest is new), never a prompt."""
    return subprocess.run(
        ["ssh", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes",
         "-o", "IdentitiesOnly=yes", "-o", "ConnectTimeout=10", "-o", "LogLevel=ERROR", "-i", str(key),
         "-p", str(port), "debian@127.0.0.1", command],
        capture_output=True, text=True, timeout=timeout)


def guest_cat(key: Path, port: int, path: str) -> str | None:
    """The guest file's text, or None while SSH does not answer (yet)."""
    out = guest_ssh(key, port, f"cat {path}")
    return out.stdout.strip() if out.returncode == 0 else None

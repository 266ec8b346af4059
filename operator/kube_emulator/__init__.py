"""A Kubernetes API emulator for tests and local mode — not for production.

It speaks the real HTTP API (discovery, CRUD, patch, watch, status subresource, finalizers, Tables,
CRD schemas) well enough for kopf, the official `kubernetes` client and kubectl to use it unchanged.
What it does and does not reproduce: docs/emulator.md.
"""

from kube_emulator.server import KubeEmulator, serve

__all__ = ["KubeEmulator", "serve"]

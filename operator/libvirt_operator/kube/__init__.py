"""Kubernetes API access of the operator itself (kopf runs its own watches)."""

"""``libvirt-operator drain NODE --to TARGET``: live-migrate every running VM of a node to another one.

Creates one VirtualMachineMigration per running or paused VM of NODE (the operators do the work), lists
the VMs that cannot migrate and why, then waits until each migration has ended and prints the outcome.
Exit status 0 when every VM of the node moved, 1 when a migration failed (or timed out), 2 when every
migration succeeded but some VMs could not be migrated (listed with why: not running, being deleted).
A command-line tool: its API calls block.
"""

from __future__ import annotations

import sys
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TextIO

import kubernetes
from kubernetes.client.rest import ApiException

from libvirt_operator.api.constants import (
    GROUP,
    MIGRATING_ANNOTATION,
    MIGRATION_KIND,
    MIGRATION_PLURAL,
    PLURAL,
    VERSION,
)
from libvirt_operator.api.migration import FINAL, MigrationPhase, phase_of
from libvirt_operator.pipeline.migration_policy import MIGRATABLE_PHASES


@dataclass(frozen=True)
class Plan:
    migrate: list[tuple[str, str]]  # (namespace, name)
    skipped: list[tuple[str, str, str]]  # (namespace, name, why)


def drain_plan(vms: Sequence[Mapping[str, Any]], node: str, target: str) -> Plan:
    """Pure: which VMs of ``node`` to migrate, and why each other one of its VMs stays."""
    migrate: list[tuple[str, str]] = []
    skipped: list[tuple[str, str, str]] = []
    for vm in sorted(vms, key=lambda v: (v["metadata"]["namespace"], v["metadata"]["name"])):
        meta = vm["metadata"]
        if (vm.get("spec") or {}).get("nodeName") != node:
            continue
        key = (str(meta["namespace"]), str(meta["name"]))
        phase = (vm.get("status") or {}).get("phase") or "Pending"
        holder = (meta.get("annotations") or {}).get(MIGRATING_ANNOTATION)
        if target == node:
            skipped.append((*key, f"already on node {target}"))
        elif meta.get("deletionTimestamp"):
            skipped.append((*key, "being deleted"))
        elif holder is not None:
            skipped.append((*key, f"already being migrated ({holder or MIGRATING_ANNOTATION})"))
        elif phase not in MIGRATABLE_PHASES:
            skipped.append((*key, f"not running (phase {phase}): nothing to migrate live"))
        else:
            migrate.append(key)
    return Plan(migrate, skipped)


def migration_body(namespace: str, vm: str, target: str, suffix: str) -> dict[str, Any]:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": MIGRATION_KIND,
            "metadata": {"name": f"drain-{vm[:40]}-{suffix}", "namespace": namespace,
                         "labels": {f"{GROUP}/drain": suffix}},
            "spec": {"vmName": vm, "targetNode": target}}


def run_drain(node: str, target: str, *, kubeconfig: str | None, namespace: str | None, timeout: float,
              out: TextIO = sys.stdout) -> int:
    configuration = kubernetes.client.Configuration()
    if kubeconfig:
        kubernetes.config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
    else:
        kubernetes.config.load_incluster_config(client_configuration=configuration)
    custom = kubernetes.client.CustomObjectsApi(kubernetes.client.ApiClient(configuration))
    selector = f"spec.nodeName={node}"
    listed = (custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, field_selector=selector)
              if namespace else custom.list_cluster_custom_object(GROUP, VERSION, PLURAL, field_selector=selector))
    plan = drain_plan(listed.get("items") or [], node, target)
    for ns, name, why in plan.skipped:
        print(f"cannot migrate {ns}/{name}: {why}", file=out)
    suffix = uuid.uuid4().hex[:6]
    created: dict[tuple[str, str], str] = {}
    for ns, name in plan.migrate:
        body = migration_body(ns, name, target, suffix)
        try:
            custom.create_namespaced_custom_object(GROUP, VERSION, ns, MIGRATION_PLURAL, body)
        except ApiException as exc:
            print(f"cannot migrate {ns}/{name}: creating the migration failed: {exc.status} {exc.reason}", file=out)
            continue
        created[(ns, name)] = body["metadata"]["name"]
        print(f"migrating {ns}/{name} to {target} ({body['metadata']['name']})", file=out)
    failed = 0
    deadline = time.monotonic() + timeout
    pending = dict(created)
    while pending:
        for (ns, name), migration in list(pending.items()):
            found = custom.get_namespaced_custom_object(GROUP, VERSION, ns, MIGRATION_PLURAL, migration)
            phase = phase_of(found)
            if phase in FINAL:
                del pending[(ns, name)]
                message = (found.get("status") or {}).get("message", "")
                print(f"{ns}/{name}: {phase.value}: {message}", file=out)
                failed += phase != MigrationPhase.SUCCEEDED
        if pending and time.monotonic() > deadline:
            for ns, name in pending:
                print(f"{ns}/{name}: still migrating after {timeout:.0f}s", file=out)
            return 1
        if pending:
            time.sleep(1.0)
    if failed or len(created) < len(plan.migrate):
        return 1
    return 2 if plan.skipped else 0  # 2: every migration succeeded, but some VMs cannot move (listed)

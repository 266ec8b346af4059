"""Names that form the API contract: group, version, kind, labels, finalizer, XML namespace."""

from pathlib import Path

GROUP = "virt.libvirt-operator.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "VirtualMachine"
PLURAL = "virtualmachines"
SINGULAR = "virtualmachine"
SHORT_NAMES = ("lvm", "lvms")
CATEGORY = "libvirt"
CRD_NAME = f"{PLURAL}.{GROUP}"

FINALIZER = f"{GROUP}/cleanup"
# Set to any value to ask for a retry of a Failed VM (documented in the README).
RETRY_ANNOTATION = f"{GROUP}/retry"
# Set to a new value to ask for a graceful reboot of a running guest (reset after its grace period).
RESTART_ANNOTATION = f"{GROUP}/restart"
# Set by users or migration tooling: while present, evacuation clean-up keeps its hands off.
MIGRATING_ANNOTATION = f"{GROUP}/migrating"

# Node-side markers (issue: host readiness).
NODE_SCHEDULABLE_LABEL = f"{GROUP}/schedulable"
NODE_CONDITION_TYPE = "LibvirtReady"
# Records that the operator itself set the schedulable label (nova's "AUTO:" rule).
NODE_LABEL_OWNER_ANNOTATION = f"{GROUP}/schedulable-set-by"

# libvirt <metadata> namespace that proves ownership of a domain.
XML_NAMESPACE = f"https://{GROUP}/xmlns/domain/v1"
XML_PREFIX = "lvo"

CRD_PATH = Path(__file__).with_name("crd.yaml")

# VirtualMachineMigration (issue 16): live migration of a running VM to another node.
MIGRATION_KIND = "VirtualMachineMigration"
MIGRATION_PLURAL = "virtualmachinemigrations"
MIGRATION_SINGULAR = "virtualmachinemigration"
# Not "vmim": KubeVirt's VirtualMachineInstanceMigration has it, and both may be installed in one cluster.
MIGRATION_SHORT_NAMES = ("lvmim",)
MIGRATION_CRD_NAME = f"{MIGRATION_PLURAL}.{GROUP}"
MIGRATION_CRD_PATH = Path(__file__).with_name("migration-crd.yaml")
# On each Node: the libvirt URI a peer-to-peer migration reaches this node's libvirtd at (--migration-uri).
MIGRATION_URI_ANNOTATION = f"{GROUP}/migration-uri"

"""libvirt-operator: libvirt/KVM virtual machines as Kubernetes VirtualMachine resources."""

__version__ = "0.1.0"

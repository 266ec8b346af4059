"""The VirtualMachine API: names, spec parsing and validation, status vocabulary."""

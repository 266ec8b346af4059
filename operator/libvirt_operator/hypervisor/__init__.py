"""Everything that touches the host: the libvirt connection, domain XML and operations, disk storage."""

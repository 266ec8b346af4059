"""The event pipeline: libvirt events to status patches, via a keyed work queue."""

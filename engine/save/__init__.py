"""Save: images from the store to an OCI + Docker image archive (entry points in ``exporter``)."""

"""Load: import OCI and Docker image archives into a store (entry point: ``importer.load``)."""

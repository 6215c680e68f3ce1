"""OCI distribution registry client: pull, push and the credentials they use (issue 13)."""

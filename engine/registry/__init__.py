"""OCI distribution registry client: pull and push over HTTP (issue 13)."""

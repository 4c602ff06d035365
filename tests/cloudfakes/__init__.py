"""Fake Hetzner, OCI and OVH APIs on loopback, with injectable faults (shared by unit, integration and e2e)."""

"""Throwaway PostgreSQL clusters for tests (the helpers live in postgressor.migrations.scratch)."""

from postgressor.migrations.scratch import SUPERUSER, Cluster, bindir, free_port, running_cluster

__all__ = ["SUPERUSER", "Cluster", "bindir", "free_port", "running_cluster"]

"""Reaching a recorded box from this machine: SSH with a pinned host key, database access, local port tunnels."""

"""Read-only checks of a stack and of the user's inputs: status, token checks, backup health."""

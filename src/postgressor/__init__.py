"""postgressor: a hardened PostgreSQL + ElectricSQL box that trusts your Supabase JWTs."""

__version__ = "0.1.0"

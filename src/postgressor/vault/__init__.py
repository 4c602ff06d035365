"""Supabase Vault: configuration values read from it (references.py), what postgressor stores in it (push.py),
and the SQL both speak (client.py)."""

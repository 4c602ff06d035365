"""The auth gateway in front of Electric: Supabase token in, per-user shape requests out."""

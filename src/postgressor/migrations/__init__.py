"""Schema migrations, the built-in Supabase-compatible auth layer, and row level security policies."""

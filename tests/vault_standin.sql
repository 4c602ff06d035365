-- A stand-in for Supabase Vault (the supabase_vault extension) on plain PostgreSQL, for the tests.
--
-- Source it follows: github.com/supabase/vault, sql/supabase_vault--0.3.0.sql at commit 16f1570 (2025-07-09; the
-- Makefile's EXTVERSION is 0.3.1 and sql/supabase_vault--0.3.0--0.3.1.sql changes no SQL). Kept the same: the
-- schema `vault`; the table vault.secrets (columns, defaults, the unique index on name where not NULL); the view
-- vault.decrypted_secrets with its columns in order (id, name, description, secret, decrypted_secret, key_id,
-- nonce, created_at, updated_at); vault.create_secret(new_secret, new_name, new_description, new_key_id) RETURNS
-- uuid and vault.update_secret(secret_id, new_secret, new_name, new_description, new_key_id) RETURNS void with the
-- same argument names, order, types and defaults, SECURITY DEFINER, search_path = '', NULL keeping a value in
-- update_secret, and EXECUTE revoked from PUBLIC.
--
-- NOT ENCRYPTED. The real extension encrypts `secret` with libsodium (deterministic XChaCha20 AEAD through its
-- C functions vault._crypto_aead_det_*, keyed by the server's root key, with the row's id as additional data) and
-- the view decrypts it. Here `secret` holds base64 of the plain UTF-8 text, decoded by the view: `secret` still
-- differs from `decrypted_secret` as in Supabase (a reader of the wrong column gets base64), but anyone who can
-- read the table reads the value. It checks names, columns and calling conventions; it cannot check encryption,
-- the root key, a value that fails to decrypt, or Supabase's grants beyond "not PUBLIC".

CREATE SCHEMA vault;

CREATE TABLE vault.secrets (
  id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  name        text,
  description text NOT NULL DEFAULT '',
  secret      text NOT NULL,
  key_id      uuid,
  nonce       bytea,  -- the real default is vault._crypto_aead_det_noncegen(); unused without encryption
  created_at  timestamptz NOT NULL DEFAULT CURRENT_TIMESTAMP,
  updated_at  timestamptz NOT NULL DEFAULT CURRENT_TIMESTAMP
);

CREATE UNIQUE INDEX ON vault.secrets USING btree (name) WHERE name IS NOT NULL;

CREATE VIEW vault.decrypted_secrets AS
SELECT s.id,
  s.name,
  s.description,
  s.secret,
  convert_from(decode(s.secret, 'base64'::text), 'utf8'::name) AS decrypted_secret,  -- the real one decrypts here
  s.key_id,
  s.nonce,
  s.created_at,
  s.updated_at
FROM vault.secrets s;

CREATE FUNCTION vault.create_secret(
  new_secret text,
  new_name text = NULL,
  new_description text = '',
  -- unused (as in the real one)
  new_key_id uuid = NULL
)
RETURNS uuid
SECURITY DEFINER
LANGUAGE plpgsql
SET search_path = ''
AS $$
DECLARE
  new_id uuid;
BEGIN
  INSERT INTO vault.secrets (secret, name, description)
  VALUES (encode(convert_to(new_secret, 'utf8'), 'base64'), new_name, new_description)
  RETURNING id INTO new_id;
  RETURN new_id;
END
$$;

CREATE FUNCTION vault.update_secret(
  secret_id uuid,
  new_secret text = NULL,
  new_name text = NULL,
  new_description text = NULL,
  -- unused (as in the real one)
  new_key_id uuid = NULL
)
RETURNS void
SECURITY DEFINER
LANGUAGE plpgsql
SET search_path = ''
AS $$
BEGIN
  UPDATE vault.secrets s
  SET
    secret = CASE WHEN new_secret IS NULL THEN s.secret
                  ELSE encode(convert_to(new_secret, 'utf8'), 'base64') END,
    name = coalesce(new_name, s.name),
    description = coalesce(new_description, s.description),
    updated_at = now()
  WHERE s.id = secret_id;
END
$$;

REVOKE ALL ON FUNCTION vault.create_secret, vault.update_secret FROM PUBLIC;

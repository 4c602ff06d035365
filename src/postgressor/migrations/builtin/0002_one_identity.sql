-- postgressor built-in: one identity. auth.jwt() builds the caller's claims from every setting a session may
-- use; auth.uid(), auth.role(), auth.email() and current_user_id() only read auth.jwt(), so they always agree.
--
-- Settings, highest precedence first (README "Who is the caller"):
--   electric.user_id          the user id (the seed's ElectricSQL setup, postgressor's gateway)
--   request.jwt.claim.sub     PostgREST < 9 style, one setting per claim (also .role and .email)
--   request.jwt.claims        PostgREST >= 9 / Supabase: the whole claims object as JSON
-- The whole-object claims count only when their "sub" is the chosen user (or absent): a session never
-- mixes one user's id with another user's email. A user id without a role claim is role "authenticated",
-- as in a Supabase user token. With no setting at all, auth.jwt() is NULL (as in Supabase).
-- Supabase's own definitions, for comparison: supabase/auth migrations/20220224000811_update_auth_functions.up.sql
-- (uid/role/email: the per-claim setting, else request.jwt.claims) and
-- 20220531120530_add_auth_jwt_function.up.sql (jwt: request.jwt.claim, else request.jwt.claims).
-- Functions another role owns (a real Supabase database) are left alone with a notice.

CREATE SCHEMA IF NOT EXISTS auth;

DO $identity$
DECLARE
    definitions text[][] := ARRAY[
        ['auth.jwt()', $fn$
CREATE OR REPLACE FUNCTION auth.jwt() RETURNS jsonb
LANGUAGE sql STABLE
AS $body$
    WITH settings AS (
        SELECT nullif(pg_catalog.current_setting('electric.user_id', true), '') AS electric_user_id,
               nullif(pg_catalog.current_setting('request.jwt.claim.sub', true), '') AS claim_sub,
               nullif(pg_catalog.current_setting('request.jwt.claim.role', true), '') AS claim_role,
               nullif(pg_catalog.current_setting('request.jwt.claim.email', true), '') AS claim_email,
               coalesce(nullif(pg_catalog.current_setting('request.jwt.claim', true), ''),
                        nullif(pg_catalog.current_setting('request.jwt.claims', true), ''))::jsonb AS claims
    ), chosen AS (
        SELECT s.*, coalesce(s.electric_user_id, s.claim_sub, s.claims OPERATOR(pg_catalog.->>) 'sub') AS sub
        FROM settings s
    ), merged AS (
        SELECT c.sub, c.claim_role, c.claim_email,
               CASE WHEN c.claims OPERATOR(pg_catalog.->>) 'sub' IS NULL
                      OR c.claims OPERATOR(pg_catalog.->>) 'sub' OPERATOR(pg_catalog.=) c.sub
                    THEN c.claims END AS claims
        FROM chosen c
    )
    SELECT CASE
        WHEN m.sub IS NULL AND m.claims IS NULL AND m.claim_role IS NULL AND m.claim_email IS NULL THEN NULL
        ELSE coalesce(m.claims, '{}'::jsonb)
             OPERATOR(pg_catalog.||) pg_catalog.jsonb_strip_nulls(pg_catalog.jsonb_build_object(
                 'sub', m.sub,
                 'role', coalesce(m.claim_role, m.claims OPERATOR(pg_catalog.->>) 'role',
                                  CASE WHEN m.sub IS NOT NULL THEN 'authenticated' END),
                 'email', coalesce(m.claim_email, m.claims OPERATOR(pg_catalog.->>) 'email')))
    END
    FROM merged m
$body$
$fn$],
        ['auth.uid()', $fn$
CREATE OR REPLACE FUNCTION auth.uid() RETURNS uuid
LANGUAGE sql STABLE
AS $body$ SELECT (auth.jwt() OPERATOR(pg_catalog.->>) 'sub')::uuid $body$
$fn$],
        ['auth.role()', $fn$
CREATE OR REPLACE FUNCTION auth.role() RETURNS text
LANGUAGE sql STABLE
AS $body$ SELECT auth.jwt() OPERATOR(pg_catalog.->>) 'role' $body$
$fn$],
        ['auth.email()', $fn$
CREATE OR REPLACE FUNCTION auth.email() RETURNS text
LANGUAGE sql STABLE
AS $body$ SELECT auth.jwt() OPERATOR(pg_catalog.->>) 'email' $body$
$fn$],
        ['public.current_user_id()', $fn$
CREATE OR REPLACE FUNCTION public.current_user_id() RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE
AS $body$ SELECT auth.jwt() OPERATOR(pg_catalog.->>) 'sub' $body$
$fn$]
    ];
    i int;
    fn regprocedure;
BEGIN
    FOR i IN 1 .. pg_catalog.array_length(definitions, 1) LOOP
        fn := pg_catalog.to_regprocedure(definitions[i][1]);
        IF fn IS NOT NULL AND NOT pg_catalog.pg_has_role(
                (SELECT proowner FROM pg_catalog.pg_proc WHERE oid = fn), 'USAGE') THEN
            RAISE NOTICE 'postgressor: % belongs to another role; left as it is', definitions[i][1];
            CONTINUE;
        END IF;
        EXECUTE definitions[i][2];
        EXECUTE pg_catalog.format('GRANT EXECUTE ON FUNCTION %s TO anon, authenticated, service_role',
                                  definitions[i][1]);
    END LOOP;
END
$identity$;

-- Every role's queries may reach auth.jwt() (postgressor's owner policies call current_user_id()): the schema
-- holds only these helpers on a postgressor box. Where another role owns it (Supabase), it is left alone.
DO $usage$
BEGIN
    GRANT USAGE ON SCHEMA auth TO PUBLIC;
EXCEPTION WHEN insufficient_privilege THEN
    RAISE NOTICE 'postgressor: schema auth belongs to another role; its grants are left as they are';
END
$usage$;

-- postgressor built-in: the caller's identity, as Supabase and the seed's ElectricSQL setup expect it.

-- Roles that Supabase policies name (TO anon / authenticated / service_role). Created only when missing.
DO $roles$
DECLARE
    missing text[] := ARRAY(
        SELECT r FROM unnest(ARRAY['anon', 'authenticated', 'service_role']) AS r
        WHERE NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = r)
    );
    r text;
BEGIN
    FOREACH r IN ARRAY missing LOOP
        BEGIN
            IF r = 'service_role' AND (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user) THEN
                EXECUTE format('CREATE ROLE %I NOLOGIN NOINHERIT BYPASSRLS', r);
            ELSE
                EXECUTE format('CREATE ROLE %I NOLOGIN NOINHERIT', r);
            END IF;
        EXCEPTION WHEN insufficient_privilege THEN
            RAISE EXCEPTION 'role "%" may not create the roles %', current_user, array_to_string(missing, ', ')
                USING ERRCODE = 'insufficient_privilege',
                      HINT = format('as a superuser run: CREATE ROLE %s NOLOGIN; (or ALTER ROLE %I CREATEROLE), '
                                    'then migrate again', array_to_string(missing, ' NOLOGIN; CREATE ROLE '),
                                    current_user);
        END;
    END LOOP;
END
$roles$;

-- current_user_id(): electric.user_id when set, else the Supabase/PostgREST JWT's "sub", else NULL.
CREATE OR REPLACE FUNCTION public.current_user_id() RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE
AS $fn$
    SELECT coalesce(
        nullif(pg_catalog.current_setting('electric.user_id', true), ''),
        nullif(nullif(pg_catalog.current_setting('request.jwt.claims', true), '')::jsonb ->> 'sub', '')
    )
$fn$;

-- Supabase's auth.uid(), auth.role() and auth.jwt(), unless the database already has them.
DO $auth$
BEGIN
    IF pg_catalog.to_regnamespace('auth') IS NULL THEN
        CREATE SCHEMA auth;
    END IF;
    IF pg_catalog.to_regprocedure('auth.uid()') IS NULL THEN
        CREATE FUNCTION auth.uid() RETURNS uuid
        LANGUAGE sql STABLE
        AS $fn$
            SELECT coalesce(
                nullif(current_setting('request.jwt.claim.sub', true), ''),
                (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'sub')
            )::uuid
        $fn$;
    END IF;
    IF pg_catalog.to_regprocedure('auth.role()') IS NULL THEN
        CREATE FUNCTION auth.role() RETURNS text
        LANGUAGE sql STABLE
        AS $fn$
            SELECT coalesce(
                nullif(current_setting('request.jwt.claim.role', true), ''),
                (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'role')
            )::text
        $fn$;
    END IF;
    IF pg_catalog.to_regprocedure('auth.jwt()') IS NULL THEN
        CREATE FUNCTION auth.jwt() RETURNS jsonb
        LANGUAGE sql STABLE
        AS $fn$
            SELECT coalesce(
                nullif(current_setting('request.jwt.claim', true), ''),
                nullif(current_setting('request.jwt.claims', true), '')
            )::jsonb
        $fn$;
    END IF;
END
$auth$;

-- Policies are evaluated with the querying role's rights: let the Supabase roles resolve auth.*.
GRANT USAGE ON SCHEMA auth TO anon, authenticated, service_role;
GRANT EXECUTE ON FUNCTION auth.uid(), auth.role(), auth.jwt(), public.current_user_id()
    TO anon, authenticated, service_role;

"""The PostgreSQL deploy: tuned config, scram-only pg_hba, roles (the owner, electric, Supabase's API roles),
the database and its extensions, ready for ElectricSQL. Every operation is idempotent."""

from __future__ import annotations

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.operations import files, postgres, server, systemd

from postgressor.box import facts
from postgressor.box.deploys.backup import ARCHIVE_DROPIN, archive_settings
from postgressor.box.deploys.base import template
from postgressor.box.layout import postgres_unit
from postgressor.box.operations import apply_config_command, postgres_config_current, role_password, sql_unless
from postgressor.box.spec import CONTRIB_EXTENSIONS, BoxSpec
from postgressor.box.tuning import tune

SUPABASE_ROLES = ("anon", "authenticated", "service_role")


@deploy("PostgreSQL")
def postgresql(spec: BoxSpec) -> None:
    machine = host.get_fact(facts.MachineSize)
    settings = tune(machine, spec.pg_version, spec.profile, spec.storage, spec.max_connections)  # type: ignore[arg-type]
    if spec.preload:
        settings["shared_preload_libraries"] = ",".join(spec.preload)
    if "pg_cron" in spec.extensions:
        settings["cron.database_name"] = spec.database
    conf = f"{spec.conf_dir}/conf.d/50-postgressor.conf"
    hba = f"{spec.conf_dir}/pg_hba.conf"
    conf_op = files.template(
        name="postgresql.conf drop-in", src=template("postgresql.conf.j2"), dest=conf,
        user="postgres", group="postgres", mode="644", settings=settings,
        listen_addresses=spec.listen_addresses, ram_mb=machine.ram_kb // 1024, cpus=machine.cpus,
        disk_gb=machine.disk_kb // 1024 // 1024, profile=spec.profile, storage=spec.storage,
    )  # fmt: skip
    hba_op = files.template(
        name="pg_hba.conf (scram-sha-256)", src=template("pg_hba.conf.j2"), dest=hba,
        user="postgres", group="postgres", mode="640",
        private_address=bool(spec.private_network), private_network=spec.private_network,
        electric_network=spec.sync.bridge_network if spec.sync else "", database=spec.database,
    )  # fmt: skip
    config_ops, paths = [conf_op, hba_op], [conf, hba]
    if spec.backup is not None:  # written with the tuning, so the first deploy restarts PostgreSQL once
        paths.append(f"{spec.conf_dir}/{ARCHIVE_DROPIN}")
        config_ops.append(files.template(
            name="WAL archiving (postgresql.conf drop-in)", src=template("backup.conf.j2"), dest=paths[-1],
            user="postgres", group="postgres", mode="644", settings=archive_settings(spec.backup),
        ))  # fmt: skip
    server.shell(name="Apply config (reload, restart only if needed)",
                 commands=[apply_config_command(spec.pg_version)],
                 _if=lambda: any(op.did_change() for op in config_ops))  # fmt: skip
    # After the files are current: config an interrupted run wrote but never loaded is applied now.
    postgres_config_current(name="Config loaded", version=spec.pg_version, paths=paths)
    systemd.service(name="PostgreSQL running", service=postgres_unit(spec.pg_version),
                    running=True, enabled=True)  # fmt: skip

    postgres.role(name=f"Role {spec.owner}", role=spec.owner, login=True, inherit=True, _su_user="postgres")
    role_password(name=f"Password for {spec.owner}", role=spec.owner)
    postgres.role(name="Role electric (replication)", role="electric", login=True, inherit=True,
                  replication=True, _su_user="postgres")  # fmt: skip
    role_password(name="Password for electric", role="electric")
    # Supabase's API roles, so policies written for Supabase apply unchanged; the owner may act as them.
    for role in SUPABASE_ROLES:
        postgres.role(name=f"Role {role} (no login)", role=role, login=False, _su_user="postgres")
    sql_unless(
        name=f"{spec.owner} may act as the Supabase roles",
        check="SELECT " + " AND ".join(f"pg_has_role('{spec.owner}', '{r}', 'MEMBER')" for r in SUPABASE_ROLES),
        apply=f'GRANT {", ".join(SUPABASE_ROLES)} TO "{spec.owner}"',
    )
    # Electric reads every row and filters per user in the gateway; forced RLS would hide rows from it.
    for role in ("electric", "service_role"):
        sql_unless(
            name=f"{role} bypasses row level security",
            check=f"SELECT rolbypassrls FROM pg_roles WHERE rolname = '{role}'",  # noqa: S608 (constant names)
            apply=f"ALTER ROLE {role} BYPASSRLS",
        )
    postgres.database(name=f"Database {spec.database}", database=spec.database, owner=spec.owner, _su_user="postgres")
    sql_unless(
        name="electric may act as the table owner",
        check=f"SELECT pg_has_role('electric', '{spec.owner}', 'USAGE')",
        apply=f'GRANT "{spec.owner}" TO electric',
    )
    sql_unless(
        name="electric may create publications",
        check=f"SELECT has_database_privilege('electric', '{spec.database}', 'CREATE')",
        apply=f'GRANT CREATE, CONNECT ON DATABASE "{spec.database}" TO electric',
    )
    if spec.extensions:
        # Supabase's layout: contrib extensions live in schema extensions, where `schema export` output names
        # them; the owner owns the schema so the export's preamble can grant on it and install trusted ones.
        sql_unless(
            name="Schema extensions",
            check="SELECT to_regnamespace('extensions') IS NOT NULL",
            apply=f'CREATE SCHEMA IF NOT EXISTS extensions AUTHORIZATION "{spec.owner}"',
            database=spec.database,
        )
    for ext in spec.extensions:
        where = " WITH SCHEMA extensions" if ext in CONTRIB_EXTENSIONS else ""
        sql_unless(
            name=f"Extension {ext}",
            check=f"SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = '{ext}')",  # noqa: S608 (known names)
            apply=f'CREATE EXTENSION IF NOT EXISTS "{ext}"{where}',
            database=spec.database,
        )

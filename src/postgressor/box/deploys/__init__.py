"""pyinfra deploys, one module per part of the box: base system, PostgreSQL, sync (Electric, gateway, Caddy),
backups."""

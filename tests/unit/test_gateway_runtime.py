"""The gateway's own runtime: its typed settings file, what the box bundle holds, the units' open-file limits."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import jinja2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from postgressor.box import gateway_bundle as bundle
from postgressor.box.deploys.base import template
from postgressor.box.deploys.sync import LIVE_CONNECTIONS, NOFILE
from postgressor.box.gateway_settings import BOX_UPSTREAM, box_gateway_toml, gateway_settings
from postgressor.config import load_settings
from postgressor.errors import PostgressorError, UsageError
from postgressor.gateway.settings import SettingsError, load

ISSUER = "https://ref.supabase.co/auth/v1"
ENV = {"ELECTRIC_SECRET": "electric-secret-0123456789"}
HOSTILE = ['a"b', "line\nbreak", "emoji \U0001f600", 'triple """ quote', "back\\slash \\u0041", "tab\tcr\r",
           "'''", "]]\n[gateway]\nport = 1", "\u2028 \ufeff", "#not a comment"]  # fmt: skip
FORBIDDEN = ("cli", "providers", "box", "advisor", "config", "vm", "lifecycle", "checks", "day2", "remote", "state")


def literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def cfg(**supabase: str) -> dict:
    return {"supabase": {"issuer": ISSUER, "jwt_secret": "s" * 32, **supabase}}


def round_trip(settings_obj, tmp_path: Path):  # type: ignore[no-untyped-def]
    path = tmp_path / "gateway.toml"
    path.write_text(box_gateway_toml(settings_obj), encoding="utf-8")
    return load(path, ENV)


@pytest.mark.parametrize("value", HOSTILE)
def test_hostile_values_round_trip(value: str, tmp_path: Path) -> None:
    tables = [{"name": f"t{value}", "owner_column": f"o{value}", "columns": ["id", f"o{value}", f"c{value}"],
               "where": f"note <> {literal(value)}"}]  # fmt: skip
    s = load_settings(**cfg(jwt_secret=f"secret{value}" * 3, audience=f"aud{value}"), sync={"tables": tables})
    got = round_trip(s, tmp_path)
    want = gateway_settings(s, upstream=BOX_UPSTREAM, host="127.0.0.1", port=s.gateway.port,
                            secret=ENV["ELECTRIC_SECRET"])  # fmt: skip
    assert got == want
    assert got.verifier.jwt_secret == f"secret{value}" * 3
    assert list(got.tables) == [f"t{value}"]
    assert got.tables[f"t{value}"].columns == ("id", f"o{value}", f"c{value}")


text = st.text(st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00"), min_size=1, max_size=20)
names = st.text(st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00."), min_size=1, max_size=20)


@settings(max_examples=60, deadline=None)
@given(name=names, owner=text, where=text, audience=text)
def test_any_text_round_trips(name: str, owner: str, where: str, audience: str, tmp_path_factory) -> None:  # type: ignore[no-untyped-def]
    where = f"{literal(where)} <> ''"
    s = load_settings(**cfg(audience=audience), sync={"tables": [{"name": name, "owner_column": owner,
                                                                   "where": where}]},
                      gateway={"cors_origins": ["https://app.example.com", "http://127.0.0.1:8080"]})  # fmt: skip
    got = round_trip(s, tmp_path_factory.mktemp("rt"))
    assert (got.verifier.audience, got.tables[name].owner_column, got.tables[name].where) == (audience, owner, where)
    assert got.cors_origins == ("https://app.example.com", "http://127.0.0.1:8080")


def test_the_electric_secret_never_goes_in_the_file() -> None:
    s = load_settings(**cfg(), sync={"tables": [{"name": "items"}]}, gateway={"electric_secret": "do-not-ship-me"})
    text = box_gateway_toml(s)
    assert "do-not-ship-me" not in text and "ELECTRIC_SECRET" not in text.split("\n", 1)[1]


@pytest.mark.parametrize(
    ("content", "env", "message"),
    [
        ("port = ", ENV, "not valid TOML: Invalid value"),
        ('upstream = "http://127.0.0.1:3000"\nbogus = 1\n', ENV, "unknown key bogus"),
        ('upstream = "http://127.0.0.1:3000"\nport = "3001"\n', ENV, "port must be an integer, not a string"),
        ('upstream = "http://127.0.0.1:3000"\nport = true\n', ENV, "port must be an integer, not true or false"),
        ('port = 3001\n', ENV, "upstream is missing"),
        ('upstream = "ftp://x"\n[verifier]\nissuer = "https://i"\njwt_secret = "k"\n[[tables]]\nname = "t"\n'
         'owner_column = "u"\n', ENV, "not an http(s) URL"),
        ('upstream = "http://127.0.0.1:3000"\nsecret = "x"\n', ENV, "'secret' does not belong in the file"),
        ('upstream = "http://127.0.0.1:3000"\n[verifier]\nissuer = "https://i"\njwt_secret = "k"\n'
         '[[tables]]\nname = "t"\nowner_column = "u"\n', {}, "no Electric secret"),
        ('upstream = "http://127.0.0.1:3000"\n[verifier]\nissuer = "https://i"\njwt_secret = "k"\n'
         '[[tables]]\nname = "t"\nowner_column = "u"\ncolumns = "id"\n', ENV, "tables[0].columns must be an array"),
        ('upstream = "http://127.0.0.1:3000"\n[verifier]\nissuer = "https://i"\njwt_secret = "k"\n'
         '[[tables]]\nname = "t"\nowner_column = "u"\n[[tables]]\nname = "t"\nowner_column = "u"\n', ENV,
         "lists 't' twice"),
        ('upstream = "http://127.0.0.1:3000"\n[verifier]\nissuer = "https://i"\n[[tables]]\nname = "t"\n'
         'owner_column = "u"\n', ENV, "no key source"),
        ('upstream = "http://127.0.0.1:3000"\ncors_origins = ["*"]\n[verifier]\nissuer = "https://i"\n'
         'jwt_secret = "k"\n[[tables]]\nname = "t"\nowner_column = "u"\n', ENV, "'*' is refused"),
        ('upstream = "http://127.0.0.1:3000"\n[verifier]\nissuer = "https://i"\njwt_secret = "k"\n[[tables]]\n'
         'name = "t"\nowner_column = "u"\nwhere = "a) OR (true"\n', ENV, "where 'a) OR (true' is refused"),
        ('upstream = "http://127.0.0.1:3000"\n[verifier]\nissuer = "https://i"\njwt_secret = "k"\nleeway = 9999\n'
         '[[tables]]\nname = "t"\nowner_column = "u"\n', ENV, "leeway must be between"),
    ],
)
def test_a_bad_file_is_one_line(content: str, env: dict, message: str, tmp_path: Path) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text(content)
    with pytest.raises(SettingsError) as err:
        load(path, env)
    assert message in str(err.value) and "\n" not in str(err.value)
    assert str(err.value).startswith(f"{path}:")


def test_python_m_gateway_reports_a_bad_file_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text('upstream = "http://127.0.0.1:3000"\nport = "x"\n')
    for args in ([str(path)], [str(tmp_path / "missing.toml")]):
        proc = subprocess.run([sys.executable, "-m", "postgressor.gateway", "--config", *args],
                              capture_output=True, text=True, env={"PATH": "/usr/bin", "ELECTRIC_SECRET": "x"},
                              timeout=60)  # fmt: skip
        assert proc.returncode == 2
        assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1, proc.stderr
        assert "Traceback" not in proc.stderr


def test_a_postgressor_toml_that_cannot_serve_is_refused_at_spec_time() -> None:
    s = load_settings(supabase={"jwt_secret": "s" * 32}, sync={"tables": [{"name": "items"}]})
    with pytest.raises(UsageError, match="no token issuer"):
        box_gateway_toml(s)


# --- what the gateway imports and the bundle holds ---------------------------------------------------


def test_the_gateway_imports_nothing_of_the_cli() -> None:
    """Run as the box does (python -m postgressor.gateway) up to argument parsing; list what got imported."""
    code = ("import sys, runpy\nsys.argv = ['x', '--help']\n"
            "try:\n    runpy.run_module('postgressor.gateway', run_name='__main__')\nexcept SystemExit:\n    pass\n"
            "print('MODULES', ' '.join(sorted(sys.modules)))\n")  # fmt: skip
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    modules = proc.stdout.split("MODULES ", 1)[1].split()
    ours = {m for m in modules if m.startswith("postgressor")}
    assert "postgressor.gateway.app" in ours and "postgressor.jwt_verify" in ours
    assert not [m for m in ours if m.split(".")[1:2] and m.split(".")[1] in FORBIDDEN]
    cli_only = {"pydantic", "pydantic_settings", "typer", "rich", "pyinfra", "httpx", "tomli_w"}
    assert not cli_only & {m.split(".")[0] for m in modules}
    # The bundle's static closure covers everything the gateway imported at run time.
    assert ours <= set(bundle.gateway_modules())


def test_the_bundle_ships_only_the_gateway_modules() -> None:
    names = set(bundle.gateway_modules())
    assert {"postgressor", "postgressor.gateway.app", "postgressor.gateway.settings", "postgressor.jwt_verify"} <= names
    assert not [n for n in names if n.split(".")[1:2] and n.split(".")[1] in FORBIDDEN]


def test_the_bundle_requirements_cover_the_gateway_imports() -> None:
    from importlib import metadata

    provided = {top for top, dists in metadata.packages_distributions().items()
                if {d.lower() for d in dists} & {r.lower() for r in bundle.GATEWAY_REQUIREMENTS}}  # fmt: skip
    assert bundle.third_party_imports() - {"tomli"} <= provided
    assert "pglast" in bundle.third_party_imports()  # the gateway checks subset where clauses with it
    assert not {"pydantic", "pydantic-settings"} & {r.lower() for r in bundle.GATEWAY_REQUIREMENTS}
    assert "tomli>=1.1" in bundle.pinned_requirements("3.10")
    assert not [r for r in bundle.pinned_requirements("3.12") if r.startswith("tomli")]


def copy_package(tmp_path: Path) -> Path:
    root = tmp_path / "postgressor"
    src = Path(bundle.postgressor.__file__).parent
    shutil.copytree(src, root, ignore=shutil.ignore_patterns("__pycache__"))
    return root


def digest_of(root: Path, target: Path) -> str:
    import hashlib

    return hashlib.sha256(bundle.package_tarball(target, root).read_bytes()).hexdigest()


def test_the_digest_moves_only_with_the_gateway_code(tmp_path: Path) -> None:
    root = copy_package(tmp_path)
    before = digest_of(root, tmp_path / "a.tar")
    catalogue = next(root.glob("advisor/*.toml"))
    catalogue.write_text(catalogue.read_text() + "\n# edited\n")
    (root / "cli" / "__init__.py").write_text("# edited\n")
    (root / "config.py").write_text("# edited\n")
    assert digest_of(root, tmp_path / "b.tar") == before
    (root / "gateway" / "app.py").write_text((root / "gateway" / "app.py").read_text() + "\n# edited\n")
    assert digest_of(root, tmp_path / "c.tar") != before


def test_the_digest_follows_the_verifier(tmp_path: Path) -> None:
    root = copy_package(tmp_path)
    before = digest_of(root, tmp_path / "a.tar")
    (root / "jwt_verify.py").write_text((root / "jwt_verify.py").read_text() + "\n# edited\n")
    assert digest_of(root, tmp_path / "b.tar") != before


@pytest.mark.parametrize(("version", "refused"), [("2.10.0", True), ("2.9.0", True), ("2.10.1", False),
                                                  ("2.10.1rc1", False), ("3.0.0", False)])  # fmt: skip
def test_the_bundle_refuses_a_vulnerable_pyjwt(version: str, refused: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    real = bundle.metadata.version
    monkeypatch.setattr(bundle.metadata, "version", lambda name: version if name == "PyJWT" else real(name))
    if refused:
        with pytest.raises(PostgressorError) as err:
            bundle.pinned_requirements()
        assert "CVE-2024-53861" in str(err.value) and "PyJWT>=2.10.1" in str(err.value)
        assert "\n" not in str(err.value)
    else:
        assert f"PyJWT=={version}" in bundle.pinned_requirements()


# --- open-file limits --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["gateway.service.j2", "caddy-limits.conf.j2"])
def test_units_hold_enough_files_for_the_live_connections(name: str) -> None:
    rendered = jinja2.Template(Path(template(name)).read_text(), undefined=jinja2.StrictUndefined).render(
        nofile=NOFILE
    )
    (limit,) = re.findall(r"^LimitNOFILE=(\d+)$", rendered, re.MULTILINE)
    assert "[Service]" in rendered
    assert int(limit) >= 2 * LIVE_CONNECTIONS + 1024


def test_every_gateway_option_reaches_the_box(tmp_path: Path) -> None:
    """Each [gateway] option the gateway has a field for is translated and survives the file (non-defaults)."""
    import dataclasses

    from postgressor.config import GatewayConfig
    from postgressor.gateway.settings import GatewaySettings

    chosen = {"cors_origins": ["https://app.example.com"], "shared_cache": True, "max_requests_per_user": 7,
              "upstream_connect_timeout": 2.5, "upstream_read_timeout": 99.0, "port": 3111}  # fmt: skip
    shared = {f.name for f in dataclasses.fields(GatewaySettings)} & set(GatewayConfig.model_fields) - {"upstream"}
    assert shared <= set(chosen), f"add a non-default value for {sorted(shared - set(chosen))} here"
    s = load_settings(**cfg(), sync={"tables": [{"name": "items"}]}, gateway=chosen)
    got = round_trip(s, tmp_path)
    for name in shared:
        want = chosen[name]
        assert getattr(got, name) == (tuple(want) if isinstance(want, list) else want), name

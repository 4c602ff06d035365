"""``postgressor verify-jwt --offline`` through the real entry point (exit codes as a user sees them)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from postgressor.cli import main

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from jwt_keys import ISSUER, SECRET, USER, es256, hs256, keys, user_claims

JWKS_PATH = "/auth/v1/.well-known/jwks.json"


def run(args: list[str], stdin: str | None = None, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """Run ``main()`` as the console script does, returning (exit code, stdout, stderr)."""
    runner = CliRunner()
    saved = sys.argv
    with runner.isolation(input=stdin, env=env) as (out, err, _):
        sys.argv = ["postgressor", *args]
        try:
            main()
            code = 0
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else 1
        finally:
            sys.argv = saved
            sys.stdout.flush()
            sys.stderr.flush()
        return code, out.getvalue().decode(), err.getvalue().decode()


@pytest.fixture(autouse=True)
def no_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # no postgressor.toml: the flags alone must be enough
    for name in ("POSTGRESSOR_TOKEN", "POSTGRESSOR_SUPABASE__JWT_SECRET", "POSTGRESSOR_SUPABASE__JWKS_URL"):
        monkeypatch.delenv(name, raising=False)


OFFLINE = ["verify-jwt", "--offline", "--issuer", ISSUER]


@pytest.fixture(autouse=True)
def secret_in_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POSTGRESSOR_SUPABASE__JWT_SECRET", SECRET)


def test_valid_token_passes_every_check_and_never_prints_it() -> None:
    token = hs256(user_claims())
    code, out, err = run([*OFFLINE, "--token", token])
    assert code == 0, err
    assert "token accepted" in out and token not in out and SECRET not in out
    for row in ("header", "key source", "signature", "exp", "iat", "nbf", "aud", "iss", "sub", "role"):
        assert row in out


def test_json_has_every_check() -> None:
    code, out, _ = run(["--json", *OFFLINE, "--token", hs256(user_claims())])
    data = json.loads(out)
    assert code == 0 and data["ok"] is True and data["token"].startswith("sha256:")
    assert [c["name"] for c in data["checks"]] == ["header", "key source", "signature", "exp", "iat", "nbf",
                                                  "aud", "iss", "sub", "role"]
    assert {c["status"] for c in data["checks"]} == {"pass"}


def test_local_json_flag_after_the_verb() -> None:
    code, out, _ = run([*OFFLINE, "--json", "--token", hs256(user_claims())])
    assert code == 0 and json.loads(out)["ok"] is True


# Times are offsets from the moment the test runs: the suite can run for most of an hour after collection.
@pytest.mark.parametrize(("claims", "row"), [
    ({"exp": -600}, "exp"),
    ({"aud": "anon"}, "aud"),
    ({"iss": "https://other.supabase.co/auth/v1"}, "iss"),
    ({"sub": None}, "sub"),
    ({"role": "service_role"}, "role"),
    ({"nbf": 600}, "nbf"),
])
def test_a_failing_check_exits_1_and_names_the_row(claims: dict, row: str) -> None:
    now = int(time.time())
    claims = {k: now + v if k in ("exp", "nbf") else v for k, v in claims.items()}
    code, out, _ = run([*OFFLINE, "--json", "--token", hs256(user_claims(**claims))])
    data = json.loads(out)
    failed = [c["name"] for c in data["checks"] if c["status"] == "fail"]
    assert code == 1 and data["ok"] is False and failed == [row]


def test_wrong_secret_fails_the_signature_row() -> None:
    code, out, _ = run([*OFFLINE, "--json", "--token", hs256(user_claims(), secret="x" * 40)])
    checks = {c["name"]: c["status"] for c in json.loads(out)["checks"]}
    assert code == 1 and checks["signature"] == "fail" and checks["exp"] == "skip"


def test_token_from_stdin_and_from_env() -> None:
    token = hs256(user_claims())
    assert run([*OFFLINE, "--token", "-"], stdin=token + "\n")[0] == 0
    assert run(OFFLINE, env={"POSTGRESSOR_TOKEN": token})[0] == 0


def test_es256_through_a_loopback_jwks(httpserver) -> None:
    httpserver.expect_request(JWKS_PATH).respond_with_json(keys().jwks())
    code, out, err = run(["verify-jwt", "--offline", "--jwks-url", httpserver.url_for(JWKS_PATH),
                          "--issuer", ISSUER, "--json", "--token", es256(user_claims())])
    assert code == 0, err
    assert "jwks (ES256)" in json.loads(out)["checks"][1]["detail"]


def test_audience_override() -> None:
    token = hs256(user_claims(aud="custom"))
    assert run([*OFFLINE, "--token", token])[0] == 1
    assert run([*OFFLINE, "--audience", "custom", "--token", token])[0] == 0


def test_mint_signs_a_short_lived_token_that_passes() -> None:
    code, out, _ = run([*OFFLINE, "--json", "--mint", "--sub", USER])
    data = json.loads(out)
    assert code == 0 and data["minted"] is True
    sub_row = next(c for c in data["checks"] if c["name"] == "sub")
    assert sub_row["detail"] == USER


@pytest.mark.parametrize(("args", "message"), [
    ([*OFFLINE], "no token"),
    ([*OFFLINE, "--mint"], "--sub"),
    ([*OFFLINE, "--mint", "--sub", "not-a-uuid"], "not a UUID"),
    ([*OFFLINE, "--mint", "--sub", USER, "--token", "a.b.c"], "not both"),
    (["verify-jwt", "--offline", "--jwks-url", "https://x.supabase.co/auth/v1/.well-known/jwks.json",
      "--mint", "--sub", USER], "asymmetric keys only"),
    (["verify-jwt", "--offline", "--jwks-url", "http://example.com/jwks.json", "--token", "a.b.c"], "https"),
    (["verify-jwt", "--token", "a.b.c"], "--offline"),
    (["verify-jwt", "--offline", "--stack", "Bad Name!", "--token", "a.b.c"], ""),
    ([*OFFLINE, "--jwt-secret", SECRET, "--token", "a.b.c"], "No such option"),
    ([*OFFLINE, "--jwt-secret-file", "-", "--token", "-"], "both read stdin"),
    ([*OFFLINE, "--jwt-secret-file", "missing.txt", "--token", "a.b.c"], "missing.txt"),
])
def test_usage_errors_exit_2_with_one_line(args: list[str], message: str, monkeypatch: pytest.MonkeyPatch) -> None:
    if "--jwks-url" in args:  # an asymmetric-only project: no HS256 secret anywhere
        monkeypatch.delenv("POSTGRESSOR_SUPABASE__JWT_SECRET")
    code, out, err = run(args)
    assert code == 2, (out, err)
    assert message in " ".join(err.split()) and "Traceback" not in err
    assert SECRET not in err


def test_no_key_source_without_config_env_or_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("POSTGRESSOR_SUPABASE__JWT_SECRET")
    code, _, err = run(["verify-jwt", "--offline", "--token", "x.y.z"])
    assert code == 2 and "no key source" in " ".join(err.split())


@pytest.mark.parametrize("where", ["file", "stdin"])
def test_secret_from_a_file_or_stdin(where: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("POSTGRESSOR_SUPABASE__JWT_SECRET")
    token = hs256(user_claims())
    path = tmp_path / "jwt-secret"
    path.write_text(SECRET + "\n")
    source = str(path) if where == "file" else "-"
    code, out, err = run([*OFFLINE, "--jwt-secret-file", source, "--token", token],
                         stdin=SECRET + "\n" if where == "stdin" else None)  # fmt: skip
    assert code == 0, err
    assert "token accepted" in out and SECRET not in out + err


def test_a_wrong_secret_file_refuses_the_token(tmp_path: Path) -> None:
    path = tmp_path / "jwt-secret"
    path.write_text("another-secret-that-is-long-enough-000")
    code, out, _ = run([*OFFLINE, "--jwt-secret-file", str(path), "--token", hs256(user_claims())])
    assert code == 1 and "token refused" in out

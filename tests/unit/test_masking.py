"""Credentials in URLs are masked wherever postgressor shows a URL."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from postgressor.cli import app
from postgressor.jwt_verify import KeySourceError, fetch_jwks_blocking
from postgressor.masking import mask_url

SECRETS = ("hunter2", "tok3n", "sb_secret_abc", "SIGVALUE")


@pytest.mark.parametrize(("text", "shown"), [
    ("postgresql://app:hunter2@db.example.com:5432/app", "postgresql://app:***@db.example.com:5432/app"),
    ("see https://tok3n@host.example.com/x for", "see https://***@host.example.com/x for"),
    ("https://ref.supabase.co/auth/v1/.well-known/jwks.json?apikey=sb_secret_abc&x=1",
     "https://ref.supabase.co/auth/v1/.well-known/jwks.json?apikey=***&x=1"),
    ("https://s3.example.com/b/o?X-Amz-Signature=SIGVALUE", "https://s3.example.com/b/o?X-Amz-Signature=***"),
    ("host=db password='hun ter2' user=app", "host=db password=*** user=app"),
    ("https://host.example.com/a@b", "https://host.example.com/a@b"),  # an @ in the path is not userinfo
    ("http://127.0.0.1:3000", "http://127.0.0.1:3000"),
    ("postgresql://app@db.example.com/app", "postgresql://app@db.example.com/app"),  # a user name, no secret
])  # fmt: skip
def test_mask_url(text: str, shown: str) -> None:
    assert mask_url(text) == shown


def test_config_check_masks_urls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "postgressor.toml").write_text(
        '[supabase]\njwks_url = "https://u:hunter2@ref.supabase.co/auth/v1/.well-known/jwks.json?apikey=tok3n"\n'
        '[gateway]\nupstream = "http://e:sb_secret_abc@127.0.0.1:3000"\n'
    )
    result = CliRunner().invoke(app, ["--json", "config", "check"])
    assert result.exit_code == 0, result.output
    assert not any(s in result.output for s in SECRETS)
    data = json.loads(result.output)["config"]
    assert data["supabase"]["jwks_url"].startswith("https://u:***@ref.supabase.co/")


def test_jwks_fetch_errors_mask_the_url(httpserver) -> None:  # type: ignore[no-untyped-def]
    httpserver.expect_request("/jwks.json").respond_with_data("nope", status=500)
    url = httpserver.url_for("/jwks.json").replace("http://", "http://u:hunter2@") + "?apikey=tok3n"
    with pytest.raises(KeySourceError) as err:
        fetch_jwks_blocking(url)
    assert "HTTP 500" in str(err.value) and not any(s in str(err.value) for s in SECRETS)


def test_verify_jwt_masks_the_jwks_url_it_cannot_reach(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    url = "https://u:hunter2@127.0.0.1:9/auth/v1/.well-known/jwks.json?apikey=tok3n"
    result = CliRunner().invoke(app, ["verify-jwt", "--offline", "--jwks-url", url, "--token",
                                      "eyJhbGciOiJFUzI1NiIsImtpZCI6ImsifQ.eyJzdWIiOiJ4In0.c2ln"])  # fmt: skip
    assert not any(s in result.output for s in SECRETS), result.output

"""CLI conventions (issue 14 item 3, issue 17 item 4): global options anywhere, JSON errors, --version,
completion, help texts that render what they say, and which configuration sources may hold what."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from postgressor import __version__
from postgressor.cli import app, hoist_global_options
from postgressor.config import OTHER_VARIABLES, Settings

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    for name in ("POSTGRESSOR_STACK", "POSTGRESSOR_PROVIDER", "POSTGRESSOR_REGION", "CI"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def root() -> Any:
    return typer.main.get_command(app)


def leaves(command: Any = None, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    command = command or root()
    yield path, command
    for name, sub in getattr(command, "commands", {}).items():
        yield from leaves(sub, (*path, name))


def own_options(command: Any) -> set[str]:
    return {n for p in command.params for n in (*p.opts, *p.secondary_opts)}


# ---- global options before or after the verb


@pytest.mark.parametrize("path", [p for p, c in leaves() if p and not hasattr(c, "commands")], ids=" ".join)
def test_global_options_after_any_verb_reach_the_root(path: tuple[str, ...]) -> None:
    command: Any = root()
    for name in path:
        command = command.commands[name]
    argv = [*path, "--json", "--stack", "pr-7", "--config=app.toml", "-s", "pr-8"]
    moved = hoist_global_options(root(), argv)
    mine = own_options(command)
    expect_front = [w for w in ("--json", "--stack", "pr-7", "--config=app.toml", "-s", "pr-8")
                    if not (w.startswith("-") and w.split("=")[0] in mine)]  # fmt: skip
    if "--stack" in mine:
        expect_front = [w for w in expect_front if w not in ("pr-7",)]
    if "-s" in mine:
        expect_front = [w for w in expect_front if w not in ("pr-8",)]
    assert moved[: len(expect_front)] == expect_front, moved


def test_nothing_after_double_dash_or_inside_a_remote_command_moves() -> None:
    assert hoist_global_options(root(), ["ssh", "--json", "--", "psql", "--json"]) == [
        "--json", "ssh", "--", "psql", "--json"]  # fmt: skip
    assert hoist_global_options(root(), ["ssh", "ls", "--json"]) == ["ssh", "ls", "--json"]


def test_config_after_the_verb_is_used(project: Path) -> None:
    (project / "other.toml").write_text('[postgres]\ndatabase = "shop"\n')
    code, out, _ = run("config", "check", "--config", "other.toml")
    assert code == 0 and "shop" in out


def test_json_after_the_verb_gives_json(project: Path) -> None:
    code, out, _ = run("regions", "--provider", "hetzner", "--json")
    assert code == 0 and json.loads(out)
    code, out, _ = run("recommend", "--near", "mumbai", "--stack", "x", "--json")
    assert code == 0 and json.loads(out)["options"]


# ---- --json failures


@pytest.mark.parametrize(("argv", "code", "kind"), [
    (["status", "--json", "--stack", "nope"], 2, "usage"),  # a PostgressorError (UsageError)
    (["up", "--json", "--provider", "bogus"], 2, "config"),  # a ConfigError
    (["--json", "up", "--no-such-flag"], 2, "usage"),  # click's own usage error
    (["config", "check", "--json", "--config", "missing.toml"], 2, "config"),
])  # fmt: skip
def test_json_failures_are_one_object_on_stdout_with_the_same_exit_code(argv: list[str], code: int,
                                                                        kind: str) -> None:  # fmt: skip
    got, out, err = run(*argv)
    assert got == code
    body = json.loads(out)
    assert set(body) == {"error"} and body["error"]["code"] == kind and body["error"]["message"]
    assert err.startswith("error: ") and body["error"]["message"] in err
    without, out_plain, _ = run(*[a for a in argv if a != "--json"])
    assert without == code and out_plain == ""


def test_json_runtime_failure_exits_1(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from postgressor.errors import PostgressorError

    def boom(*args: Any, **kwargs: Any) -> None:
        raise PostgressorError("the box is unreachable; check its address")

    monkeypatch.setattr("postgressor.lifecycle.plan", boom)
    code, out, _ = run("plan", "--json")
    assert code == 1 and json.loads(out) == {
        "error": {"code": "failed", "message": "the box is unreachable; check its address"}}  # fmt: skip


# ---- --version, completion


def test_version() -> None:
    code, out, _ = run("--version")
    assert code == 0 and out.strip() == f"postgressor {__version__}"
    code, out, _ = run("--version", "--json")
    assert json.loads(out) == {"version": __version__}


def test_shell_completion_is_offered() -> None:
    assert {"--install-completion", "--show-completion"} <= own_options(root())
    code, out, _ = run("--help")
    assert code == 0 and "--install-completion" in out


# ---- every help text renders what it says (also issue 17 item 4)

BRACKETED = re.compile(r"\[\[?[a-z_.]+\]?\]")


def _texts(command: Any) -> list[str]:
    return [t for t in (command.help, *(getattr(p, "help", None) for p in command.params)) if t]


@pytest.mark.parametrize("path", [p for p, _ in leaves()], ids=lambda p: " ".join(p) or "postgressor")
def test_help_renders_brackets_and_no_placeholders(path: tuple[str, ...]) -> None:
    command: Any = root()
    for name in path:
        command = command.commands[name]
    code, out, err = run(*path, "--help")
    assert code == 0, err
    flat = " ".join(out.split())
    for text in _texts(command):
        for bracketed in BRACKETED.findall(text):
            assert bracketed in flat, f"{' '.join(path)} --help lost {bracketed!r}"
    assert "(default: )" not in flat and "[default: ]" not in flat
    assert not re.search(r"\b(TODO|FIXME|XXX|placeholder|lorem)\b", flat, re.IGNORECASE)
    for param in command.params:
        if getattr(param, "is_flag", False) and param.param_type_name == "option":
            line = next((ln for ln in out.splitlines() if param.opts[0] in ln.split()), "")
            assert "<" not in line.split("  ")[0] if line.strip() else True, f"flag {param.opts[0]} shows a metavar"
    assert "<bool>" not in out


def test_the_migrate_help_of_the_issue() -> None:
    _, out, _ = run("migrate", "--help")
    flat = " ".join(out.split())
    assert "[[sync.tables]]" in flat and "(default: [migrations])" in flat


# ---- configuration sources


def test_an_apps_dotenv_breaks_no_command(project: Path) -> None:
    (project / ".env").write_text("DATABASE_URL=postgres://app@db/app\nNEXT_PUBLIC_SUPABASE_URL=https://x\n"
                                  "POSTGRESSOR_STACK=abc\nPOSTGRESSOR_POSTGRES__DATABASE=shop\n")  # fmt: skip
    code, out, err = run("config", "check")
    assert code == 0, err
    assert "shop" in out  # POSTGRESSOR_* keys in .env still count
    for argv in (["plan"], ["regions"], ["cost", "--region", "fsn1"], ["status"]):
        code, _, err = run(*argv)
        assert "unknown" not in err and "database_url" not in err.lower(), (argv, err)


@pytest.mark.parametrize(("where", "name"), [("environment", "POSTGRESSOR_PROVIDR"),
                                             (".env", "POSTGRESSOR_BOGUS")])  # fmt: skip
def test_unknown_postgressor_variables_are_refused(project: Path, monkeypatch: pytest.MonkeyPatch, where: str,
                                                   name: str) -> None:  # fmt: skip
    if where == ".env":
        (project / ".env").write_text(f"{name}=1\n")
    else:
        monkeypatch.setenv(name, "1")
    code, _, err = run("config", "check")
    assert code == 2 and f"{where}: unknown variable {name}" in err


def test_unknown_nested_variable_and_toml_key_are_refused(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POSTGRESSOR_HETZNER__TOKN", "x")
    code, _, err = run("config", "check")
    assert code == 2 and "hetzner.tokn" in err and "did you mean 'token'" in err
    monkeypatch.delenv("POSTGRESSOR_HETZNER__TOKN")
    (project / "postgressor.toml").write_text("[postgres]\ndatabse = 'x'\n")
    code, _, err = run("config", "check")
    assert code == 2 and "postgres.databse" in err


@pytest.mark.parametrize("name", ["POSTGRESSOR_SYNC__TABLES", "POSTGRESSOR_SYNC", "POSTGRESSOR_HARDENING__EXTRA_PORTS"])
def test_bad_json_in_a_variable_names_it(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    monkeypatch.setenv(name, "[{bad")
    monkeypatch.setenv("POSTGRESSOR_SUPABASE__JWT_SECRET", "s3cret-value")
    code, _, err = run("config", "check")
    assert code == 2 and err.count("\n") == 1
    assert f"{name} (environment)" in err and "not valid JSON" in err
    assert "s3cret-value" not in err and "[{bad" not in err and "TOML" not in err


def test_every_postgressor_variable_the_code_reads_is_known() -> None:
    """A new POSTGRESSOR_* variable must be a setting or listed in config.OTHER_VARIABLES (else refused)."""
    names = {m.group(0) for path in (ROOT / "src" / "postgressor").rglob("*.py")
             for m in re.finditer(r"\bPOSTGRESSOR_[A-Z0-9_]*[A-Z0-9]\b", path.read_text())}  # fmt: skip
    settings = {f"POSTGRESSOR_{f.upper()}" for f in Settings.model_fields}
    unknown = {n for n in names if n not in OTHER_VARIABLES
               and n.split("__")[0] not in settings and n != "POSTGRESSOR_"}  # fmt: skip
    assert unknown == set()


# ---- Supabase's current keys first (item 4)


def test_init_template_leads_with_jwks_and_leaves_the_provider_to_the_region(project: Path) -> None:
    code, _, err = run("init")
    assert code == 0, err
    text = (project / "postgressor.toml").read_text()
    supabase = text[text.index("[supabase]"):]
    assert supabase.index("jwks_url") < supabase.index("JWT_SECRET") and "publishable" in supabase
    assert "Legacy" in supabase and "deprecated" in supabase
    assert not re.search(r"^provider\s*=", text, re.MULTILINE)
    assert run("config", "check")[0] == 0
    code, _, err = run("plan", "--region", "mumbai")  # the template does not pin `local`
    assert "has no regions" not in err


def test_readme_leads_with_jwks_and_marks_hs256_legacy() -> None:
    readme = (ROOT / "README.md").read_text()
    sync = readme[readme.index("## Sync"):readme.index("## Commands")]
    assert sync.index("jwks_url") < sync.index("jwt_secret")
    assert "legacy" in sync.lower() and "publishable" in sync
    first_screen = readme[:readme.index("## What `up` builds")]
    assert "--region mumbai" in first_screen and "--yes" in first_screen


def test_a_failure_after_a_json_result_keeps_stdout_one_document(monkeypatch: pytest.MonkeyPatch) -> None:
    from postgressor.cli import common
    from postgressor.errors import PostgressorError

    def plan_then_fail(*args: Any, **kwargs: Any) -> None:
        common.emit_json({"ok": False, "detail": "operation x failed"})
        raise PostgressorError("operation x failed; fix it and run 'postgressor deploy'")

    monkeypatch.setattr("postgressor.lifecycle.plan", plan_then_fail)
    code, out, err = run("plan", "--json")
    assert code == 1 and json.loads(out) == {"ok": False, "detail": "operation x failed"}
    assert err.startswith("error: operation x failed")


def test_completion_answers_with_verbs() -> None:
    env = {"_POSTGRESSOR_COMPLETE": "complete_bash", "COMP_WORDS": "postgressor se", "COMP_CWORD": "1"}
    result = CliRunner().invoke(app, [], env=env, prog_name="postgressor")
    assert result.exit_code == 0 and sorted(result.stdout.split()) == ["secrets", "servers"]

"""The CI example cannot rot: every `postgressor` command in examples/github-actions/staging.yml must be a
real command of the CLI with real options (checked against typer's click command tree), and no command
may wait on stdin in CI."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml
from typer.testing import CliRunner

from postgressor import __version__
from postgressor.cli import app, common
from postgressor.config import Settings
from postgressor.errors import UsageError

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "github-actions" / "staging.yml"
EXPRESSION = re.compile(r"\$\{\{.*?\}\}")
ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
PUNCTUATION = set("();<>|&")


def workflow() -> dict:
    return yaml.safe_load(EXAMPLE.read_text())


def scripts(doc: dict) -> list[str]:
    return [step["run"] for job in doc["jobs"].values() for step in job["steps"] if "run" in step]


def commands_in(script: str) -> list[list[str]]:
    """The argv (after `postgressor`) of every simple command in a shell script that runs postgressor."""
    text = EXPRESSION.sub("EXPR", script).replace("\\\n", " ")
    found = []
    for line in text.splitlines():
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        lexer.commenters = ""
        words: list[str] = []
        for token in [*lexer, ";"]:
            if token and set(token) <= PUNCTUATION:  # |, &&, ;, >, ... end a simple command
                while words and ASSIGNMENT.match(words[0]):
                    words.pop(0)
                if words and words[0] == "postgressor":
                    found.append(words[1:])
                words = []
            else:
                words.append(token)
    return found


# Typer may ship its own click: recognise parameters and groups by what they are, not by class.
def _options(command: Any) -> dict[str, Any]:
    return {name: p for p in command.params if p.param_type_name == "option" for name in (*p.opts, *p.secondary_opts)}


def _is_group(command: Any) -> bool:
    return hasattr(command, "commands")


def resolve(argv: list[str]) -> tuple[list[str], set[str]]:
    """Walk ``argv`` down the click tree; return the command path and every option used. Raises
    AssertionError naming the first thing the CLI would reject."""
    command: Any = typer.main.get_command(app)
    path, used, i = ["postgressor"], set(), 0
    positionals = 0
    while i < len(argv):
        word = argv[i]
        where = " ".join(path)
        if word.startswith("-") and word != "-":
            name = word.split("=", 1)[0]
            options = _options(command)
            assert name in options, f"'{where}' has no option {name}"
            used.add(options[name].opts[0])
            if not options[name].is_flag and not options[name].count and "=" not in word:
                i += 1
                assert i < len(argv), f"'{where} {name}' needs a value"
        elif _is_group(command):
            sub = command.commands.get(word)
            assert sub is not None, f"'{where}' has no command {word!r}"
            command, positionals = sub, 0
            path.append(word)
        else:
            arguments = [p for p in command.params if p.param_type_name == "argument"]
            unlimited = any(a.nargs == -1 for a in arguments)
            positionals += 1
            assert unlimited or positionals <= len(arguments), f"'{where}' takes no argument {word!r}"
        i += 1
    assert not _is_group(command), f"'{' '.join(path)}' needs a command"
    return path, used


def test_every_postgressor_command_in_the_example_exists() -> None:
    found = [argv for script in scripts(workflow()) for argv in commands_in(script)]
    verbs = [resolve(argv)[0][-1] for argv in found]
    # the CI story needs all of these; an example that lost one would pass the checks vacuously
    assert {"up", "migrate", "verify-jwt", "destroy"} <= set(verbs), verbs


def test_every_command_is_machine_readable_and_never_asks() -> None:
    for argv in (a for script in scripts(workflow()) for a in commands_in(script)):
        path, used = resolve(argv)
        assert "--json" in used, f"{' '.join(argv)}: add --json"
        command: Any = typer.main.get_command(app)
        for name in path[1:]:
            command = command.commands[name]
        if "--yes" in _options(command):
            assert "--yes" in used, f"{' '.join(argv)}: add --yes (it would ask otherwise)"
        if path[1:] != ["servers", "list"]:  # the reaper's listing covers every stack
            assert "--stack" in used, f"{' '.join(argv)}: name the PR's stack"


def test_up_targets_hetzner_with_a_region_and_the_state_dir_is_cached() -> None:
    doc = workflow()
    ups = [a for s in scripts(doc) for a in commands_in(s) if resolve(a)[0][-1] == "up"]
    assert ups and all({"--provider", "--region"} <= resolve(a)[1] for a in ups)
    assert all(a[a.index("--provider") + 1] == "hetzner" for a in ups)
    cached = {step["with"]["path"] for job in doc["jobs"].values() for step in job["steps"]
              if str(step.get("uses", "")).startswith("actions/cache")}
    assert cached == {str(Settings.model_fields["state_dir"].default)}


@pytest.mark.parametrize(("line", "problem"), [
    ("postgressor --json --stack x up --auto-approve", "has no option --auto-approve"),
    ("postgressor --json --stack x destroyy --yes", "has no command 'destroyy'"),
    ("postgressor --json verify-jwt --sub", "needs a value"),
    ("postgressor --json config", "needs a command"),
    ("postgressor --json --stack x deploy extra", "takes no argument"),
])
def test_the_checker_rejects_what_the_cli_would(line: str, problem: str) -> None:
    (argv,) = commands_in(line)
    with pytest.raises(AssertionError, match=problem):
        resolve(argv)


def test_the_parser_finds_commands_behind_assignments_pipes_and_continuations() -> None:
    script = ('X=1 postgressor --json --stack "pr-${{ github.event.number }}" \\\n  migrate --yes > out.json\n'
              "echo hi | postgressor --json verify-jwt --offline && true\n"
              "python -m pip install postgressor\n")
    assert commands_in(script) == [["--json", "--stack", "pr-EXPR", "migrate", "--yes"],
                                   ["--json", "verify-jwt", "--offline"]]


# --- never waiting on stdin ------------------------------------------------------------------------


def test_confirm_refuses_in_ci_even_with_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys.stdin, "isatty", lambda: True, raising=False)
    monkeypatch.setattr(typer, "confirm", lambda *a, **k: pytest.fail("asked on stdin in CI"))
    monkeypatch.setenv("CI", "true")
    with pytest.raises(UsageError, match="pass --yes"):
        common.confirm("Destroy it?", yes=False)
    common.confirm("Destroy it?", yes=True)  # --yes never asks


def test_confirm_refuses_without_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.setattr(sys.stdin, "isatty", lambda: False, raising=False)
    monkeypatch.setattr(typer, "confirm", lambda *a, **k: pytest.fail("asked without a terminal"))
    with pytest.raises(UsageError, match="pass --yes"):
        common.confirm("Apply?", yes=False)


def test_no_prompt_bypasses_common_confirm() -> None:
    """Every question goes through cli.common.confirm (which checks interactive()); nothing else reads
    the terminal."""
    asking = re.compile(r"\b(typer|click)\.(confirm|prompt)\b|\binput\(|\bgetpass\b")
    offenders = [f"{path.relative_to(ROOT)}:{n}" for path in (ROOT / "src" / "postgressor").rglob("*.py")
                 for n, line in enumerate(path.read_text().splitlines(), 1)
                 if asking.search(line) and path.name != "common.py"]
    assert offenders == []


def test_destroy_without_yes_in_ci_exits_2_without_waiting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CI", "true")
    result = CliRunner().invoke(app, ["--stack", "pr-1", "destroy"], input=None)
    assert result.exit_code == 2 and "pass --yes" in result.stderr


# --- supply chain, secrets, environments, the summary and the reaper ---------------------------------

# Node 24 majors (REFERENCE §9: runners dropped Node 20 in September 2026); `using: node24` in their action.yml
NODE24_MAJORS = {"actions/checkout": 5, "actions/setup-python": 6, "actions/cache": 5}
PINNED = re.compile(r"^\s*(?:-\s*)?uses:\s*([\w.-]+/[\w.-]+)(?:/[\w./-]+)?@([0-9a-f]{40})\s+#\s*v(\d+)\.\d+\.\d+\s*$")


def test_every_action_is_pinned_by_sha_to_a_node24_major() -> None:
    lines = [ln for ln in EXAMPLE.read_text().splitlines() if re.match(r"^\s*(-\s*)?uses:", ln)]
    assert lines
    for line in lines:
        match = PINNED.match(line)
        assert match, f"not pinned by a 40-hex commit SHA with a '# vX.Y.Z' comment: {line.strip()}"
        action, _, major = match.groups()
        assert int(major) >= NODE24_MAJORS[action], f"{action} v{major} predates Node 24"
    assert "rev-list" in EXAMPLE.read_text()  # says where the SHAs come from


def test_postgressor_is_pinned_to_this_release() -> None:
    installs = [s for s in scripts(workflow()) if "pip install" in s]
    assert installs and all(f'"postgressor=={__version__}"' in s for s in installs), installs


def test_secrets_reach_only_the_steps_that_use_them_inside_an_environment() -> None:
    doc = workflow()
    assert "secrets." not in json.dumps(doc.get("env", {}))
    for name, job in doc["jobs"].items():
        assert "secrets." not in json.dumps(job.get("env", {})), name
        uses_secrets = "secrets." in json.dumps(job["steps"])
        assert not uses_secrets or job.get("environment"), f"job {name} uses secrets without an environment"
        for step in job["steps"]:
            if "run" in step or "secrets." not in json.dumps(step):
                continue
            raise AssertionError(f"{name}: action step {step.get('uses')} gets a secret")
        for step in job["steps"]:
            for var, value in (step.get("env") or {}).items():
                if "secrets." in str(value) and var != "POSTGRESSOR_SUPABASE__JWT_SECRET":
                    assert f"${var}" in step["run"] or var in {"HCLOUD_TOKEN"}, (name, var)


def test_the_hetzner_token_is_only_where_postgressor_talks_to_hetzner() -> None:
    cloud_verbs = {"up", "destroy", "list"}  # list/destroy of `servers` too
    for job in workflow()["jobs"].values():
        for step in job["steps"]:
            if "run" not in step:
                continue
            verbs = {resolve(a)[0][-1] for a in commands_in(step["run"])}
            has_token = "HCLOUD_TOKEN" in (step.get("env") or {})
            assert has_token == bool(verbs & cloud_verbs), (step.get("name"), verbs)


def _report_script() -> str:
    (step,) = [s for s in workflow()["jobs"]["staging"]["steps"] if s.get("name") == "Report"]
    return str(step["run"])


def test_the_summary_shows_the_error_when_up_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run the Report step on what `up --json` prints when it fails (the CLI's own output)."""
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["--json", "--stack", "pr-1", "up", "--provider", "hetzner", "--region",
                                      "mumbai", "--yes"])  # fmt: skip
    assert result.exit_code == 2
    (tmp_path / "up.json").write_text(result.stdout)
    (tmp_path / "migrate.json").write_text("")  # a step that died before printing
    summary = tmp_path / "summary.md"
    subprocess.run(["bash", "-e", "-c", _report_script()], cwd=tmp_path, check=True,
                   env={**os.environ, "GITHUB_STEP_SUMMARY": str(summary)})  # fmt: skip
    text = summary.read_text()
    message = json.loads(result.stdout)["error"]["message"]
    assert f"- error (usage): {message}" in text or f"- error (config): {message}" in text
    assert "### migrate" in text and "no JSON result" in text


def test_a_scheduled_reaper_lists_labelled_servers_and_destroys_closed_prs() -> None:
    doc = workflow()
    triggers = doc.get("on") or doc.get(True)  # YAML 1.1 reads a bare `on` as True
    assert triggers["schedule"] and "pull_request" in triggers
    reaper = doc["jobs"]["reaper"]
    assert "schedule" in reaper["if"] and reaper.get("environment")
    commands = [resolve(a)[0][1:] for s in (st["run"] for st in reaper["steps"] if "run" in st)
                for a in commands_in(s)]  # fmt: skip
    assert ["servers", "list"] in commands and ["servers", "destroy"] in commands
    script = "\n".join(st.get("run", "") for st in reaper["steps"])
    assert "gh pr view" in script and "OPEN" in script
    assert doc["env"]["POSTGRESSOR_PROJECT"]  # the label the reaper finds servers by, the same in every job

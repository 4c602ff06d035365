"""Health-gated configuration changes: a service that does not come up healthy goes back to what worked.

Each gated service keeps a ``<file>.good`` copy of every configuration file it last answered 200 on. A change
is applied (restart or reload), then the health URL is polled; when it never answers 200, the ``.good`` copies
are put back, the service is restarted on them, and the operation fails with the service's own last journal
line. A ``probe`` (the gateway's) runs the new configuration beside the live service first, so a setting that
cannot start never stops the running one.
"""

from __future__ import annotations

import shlex
from collections.abc import Generator

from pyinfra import host
from pyinfra.api import FactBase, operation

from postgressor.box import facts
from postgressor.box.layout import MARKERS_DIR

JOURNAL_LINE = 200  # characters of the journal line quoted in an error


class MissingGoodCopies(FactBase[int]):
    """How many of ``files`` have no ``.good`` copy yet."""

    def command(self, files: list[str]) -> str:
        return (
            "n=0; for f in "
            + " ".join(shlex.quote(f) for f in files)
            + '; do [ -e "$f.good" ] || n=$((n+1)); done; echo $n'
        )

    def process(self, output: list[str]) -> int:
        return int(output[0].strip() or 0)

    @staticmethod
    def default() -> int:
        return 0


def _files(files: list[str]) -> str:
    return " ".join(shlex.quote(f) for f in files)


@operation()
def keep_last_good(files: list[str], url: str) -> Generator[str, None, None]:
    """A box deployed before health gating: record its files as good while the service answers 200."""
    if host.get_fact(MissingGoodCopies, files=files) == 0:
        return
    if host.get_fact(facts.HttpStatus, url=url) != "200":
        return
    yield f'for f in {_files(files)}; do [ -e "$f" ] && cp -p "$f" "$f.good"; done; true'


def gated_script(
    label: str,
    unit: str,
    files: list[str],
    apply: str,
    url: str,
    timeout: int,
    done: str,
    probe: str = "",
    curl_args: str = "",
) -> str:
    """Shell that applies a changed configuration behind a health gate (see the module docstring).

    ``apply`` restarts or reloads ``unit``; ``done`` runs after a healthy start (records the marker); ``probe``
    is shell that returns non-zero with its reason in ``$why`` when the new configuration cannot start.
    Exit 0 healthy; 1 with one line on stderr naming what was rolled back and why."""
    q_url = shlex.quote(url)
    lines = [
        f"files={shlex.quote(_files(files))}",
        'good() { for f in $files; do [ -e "$f.good" ] || return 1; done; }',
        'restore() { for f in $files; do cp -p "$f.good" "$f"; done; }',
        'keep() { for f in $files; do cp -p "$f" "$f.good"; done; }',
        f"healthy() {{ i=0; while [ $i -lt {int(timeout)} ]; do "
        f"[ \"$(curl -s {curl_args} -o /dev/null -m 5 -w '%{{http_code}}' {q_url})\" = 200 ] && return 0; "
        "i=$((i+1)); sleep 1; done; return 1; }",
        'lastline() { journalctl "_SYSTEMD_UNIT=$1" --since "@$2" -o cat --no-pager 2>/dev/null '
        f"| grep -v '^[[:space:]]*$' | tail -n 1 | cut -c1-{JOURNAL_LINE}; }}",
        "oneline() { grep -v '^[[:space:]]*$' | tail -n 1 | cut -c1-" + str(JOURNAL_LINE) + "; }",
    ]
    if probe:
        lines += [
            f"if good; then why=''; if ! {{ {probe}; }}; then restore; "
            f'echo "{label}: the new configuration does not start ($why); kept {label} running on the previous '
            "configuration (not restarted)\" >&2; exit 1; fi; fi",
        ]
    lines += [
        "start=$(date +%s)",
        f"out=$({{ {apply}; }} 2>&1); rc=$?",
        f"if [ $rc = 0 ] && healthy; then keep; {done}; exit 0; fi",
        "sleep 1",  # journald reads the service's output asynchronously
        f'if [ $rc != 0 ]; then why=$(printf "%s\\n" "$out" | oneline); else why=$(lastline {unit}.service $start); fi',
        f'[ -n "$why" ] || why="no answer 200 from {url} within {int(timeout)} s"',
        "if good; then restore; "
        f"if {{ {apply}; }} >/dev/null 2>&1 && healthy; then now='it answers 200 again'; "
        f"else now='it is still unhealthy: see journalctl -u {unit}'; fi; "
        f'echo "{label} did not become healthy on the new configuration ($why); rolled back to the previous '
        f'configuration and restarted {label} on it ($now)" >&2; '
        f'else echo "{label} did not become healthy within {int(timeout)} s ($why); see journalctl -u {unit} '
        'on the box" >&2; fi',
        "exit 1",
    ]
    return "\n".join(lines)


@operation()
def gated_apply(
    label: str,
    unit: str,
    files: list[str],
    apply: str,
    url: str,
    timeout: int,
    marker: str,
    digest: str,
    probe: str = "",
    curl_args: str = "",
) -> Generator[str, None, None]:
    """Apply ``files`` to ``unit`` unless already applied for ``digest``; roll back when it turns unhealthy."""
    path = f"{MARKERS_DIR}/{marker}"
    if host.get_fact(facts.FileText, path=path) == digest:
        return
    done = f"install -d -m 0700 {MARKERS_DIR} && echo {digest} > {path}"
    yield gated_script(label, unit, files, apply, url, timeout, done, probe, curl_args)


def gateway_probe(config: str, env_file: str, home: str, probe_unit: str = "postgressor-gateway-probe") -> str:
    """Shell that starts the gateway on the new ``config`` beside the live one (the same port when it moves,
    else a free one) as a transient unit, and waits for /health; on failure ``$why`` is its last journal line."""
    q = shlex.quote
    probe_config = f"/run/postgressor/{probe_unit}.toml"
    return (
        f"new=$(sed -n 's/^port = //p' {q(config)}); old=$(sed -n 's/^port = //p' {q(config + '.good')}); pp=$new; "
        'if [ "$new" = "$old" ]; then pp=$(python3 -c \'import socket; s = socket.socket(); '
        's.bind(("127.0.0.1", 0)); print(s.getsockname()[1])\'); fi; '
        f"install -d -m 755 /run/postgressor; install -m 600 -o postgressor-gw -g postgressor-gw /dev/null "
        f'{probe_config}; sed "s/^port = .*/port = $pp/" {q(config)} > {probe_config}; '
        f"pstart=$(date +%s); systemctl reset-failed {probe_unit} >/dev/null 2>&1; "
        f"systemd-run --quiet --collect --unit={probe_unit} -p User=postgressor-gw -p Group=postgressor-gw "
        f"-p EnvironmentFile={q(env_file)} --setenv=PYTHONPATH={q(home)}/lib --setenv=PYTHONDONTWRITEBYTECODE=1 "
        f"{q(home)}/venv/bin/python -m postgressor.gateway --config {probe_config} >/dev/null 2>&1; "
        "pok=1; i=0; while [ $i -lt 60 ]; do "
        "[ \"$(curl -s -o /dev/null -m 5 -w '%{http_code}' http://127.0.0.1:$pp/health)\" = 200 ] "
        "&& { pok=0; break; }; "
        f"systemctl is-active -q {probe_unit} || break; i=$((i+1)); sleep 1; done; "
        f"systemctl stop {probe_unit} >/dev/null 2>&1; systemctl reset-failed {probe_unit} >/dev/null 2>&1; "
        f"rm -f {probe_config}; "
        f'[ $pok = 0 ] || {{ sleep 1; why=$(lastline {probe_unit}.service $pstart); [ -n "$why" ] || '
        'why="no answer 200 on /health within 60 s"; false; }'
    )

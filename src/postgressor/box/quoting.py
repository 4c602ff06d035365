"""Quoting for the files and commands a value lands in on the box, one function per syntax.

Shell commands use ``shlex.quote``; these cover the other places values land.
"""

from __future__ import annotations


def systemd_word(value: str) -> str:
    """``value`` as one word of a systemd unit's ``Exec*=`` line: double-quoted with ``\\`` and ``"`` escaped,
    ``%`` doubled (specifiers) and ``$`` doubled (variable expansion), per systemd.service(5) "Command lines"."""
    if any(ch in value for ch in "\n\r\0"):
        raise ValueError("a systemd command-line word cannot hold a newline or NUL")
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%").replace("$", "$$")
    return f'"{escaped}"'


def caddyfile_token(value: str) -> str:
    """``value`` as one Caddyfile token: double-quoted with ``\\`` and ``"`` escaped (caddyconfig/caddyfile/lexer.go
    reads a quoted token up to the next unescaped quote; braces and spaces inside it are literal)."""
    if any(ch in value for ch in "\n\r\0"):
        raise ValueError("a Caddyfile token cannot hold a newline or NUL")
    if "{$" in value:  # caddyfile.replaceEnvVars substitutes these before the lexer sees any quote
        raise ValueError("a Caddyfile token cannot hold {$, which Caddy replaces with an environment variable")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def sql_literal(value: str) -> str:
    """``value`` as a SQL string literal: single-quoted with ``'`` doubled (standard_conforming_strings on, the
    default since PostgreSQL 9.1, so backslashes are literal)."""
    return "'" + value.replace("'", "''") + "'"

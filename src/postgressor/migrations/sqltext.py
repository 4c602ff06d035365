"""Split SQL text into statements the way psql does, keeping each statement's place in the file.

Quotes ('', E'', "", $tag$), comments (--, nested /* */), psql meta-commands (a line starting with a
backslash) and SQL-standard function bodies (BEGIN ATOMIC ... END) are respected, so a ';' inside any
of them does not end a statement.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

_DOLLAR_TAG = re.compile(r"\$(?:[A-Za-z_\x80-\U0010ffff][A-Za-z0-9_\x80-\U0010ffff]*)?\$")
_WORD = re.compile(r"[A-Za-z_\x80-\U0010ffff][A-Za-z0-9_$\x80-\U0010ffff]*")


@dataclass(frozen=True)
class Segment:
    """``source[start:end]`` is the whole segment, leading comments and the closing ';' included."""

    source: str
    start: int
    end: int
    first: int  # offset of the first character that is not blank or a comment; == end when none
    kind: Literal["sql", "meta", "blank"]

    @property
    def text(self) -> str:
        return self.source[self.start : self.end]

    @property
    def statement(self) -> str:
        """The statement without its leading comments and blanks."""
        return self.source[self.first : self.end]

    @property
    def line(self) -> int:
        """1-based line of the statement's first significant character."""
        return line_of(self.source, self.first)


def line_of(source: str, offset: int) -> int:
    return source.count("\n", 0, offset) + 1


def _skip_quoted(text: str, i: int, quote: str, backslashes: bool) -> int:
    """Index just past the closing quote of a literal that opens at ``text[i]``."""
    n = len(text)
    i += 1
    while i < n:
        ch = text[i]
        if backslashes and ch == "\\":
            i += 2
            continue
        if ch == quote:
            if i + 1 < n and text[i + 1] == quote:
                i += 2
                continue
            return i + 1
        i += 1
    return n


def _skip_block_comment(text: str, i: int) -> int:
    depth, n = 0, len(text)
    while i < n:
        if text.startswith("/*", i):
            depth += 1
            i += 2
        elif text.startswith("*/", i):
            depth -= 1
            i += 2
            if depth == 0:
                return i
        else:
            i += 1
    return n


def split(text: str) -> list[Segment]:
    """All segments of ``text`` in order; their concatenation is ``text`` exactly."""
    segments: list[Segment] = []
    n = len(text)
    start = i = 0
    first = -1
    words: list[str] = []  # leading words of the statement, upper-cased (first few only)
    atomic_depth = 0

    def close(end: int, kind: Literal["sql", "meta", "blank"]) -> None:
        nonlocal start, first, words, atomic_depth
        segments.append(Segment(text, start, end, first if first >= 0 else end, kind))
        start, first, words, atomic_depth = end, -1, [], 0

    while i < n:
        ch = text[i]
        if ch.isspace():
            i += 1
            continue
        if text.startswith("--", i):
            nl = text.find("\n", i)
            i = n if nl < 0 else nl + 1
            continue
        if text.startswith("/*", i):
            i = _skip_block_comment(text, i)
            continue
        if first < 0 and ch == "\\":
            # psql meta-command: runs to the end of the line
            nl = text.find("\n", i)
            first, end = i, (n if nl < 0 else nl + 1)
            close(end, "meta")
            i = end
            continue
        if first < 0:
            first = i
        if ch == ";" and atomic_depth == 0:
            i += 1
            close(i, "sql")
            continue
        if ch == "'":
            prev = text[i - 1] if i > 0 else ""
            escape = prev in "eE" and (i < 2 or not (text[i - 2].isalnum() or text[i - 2] in "_$"))
            i = _skip_quoted(text, i, "'", escape)
            continue
        if ch == '"':
            i = _skip_quoted(text, i, '"', False)
            continue
        if ch == "$" and (i == 0 or not (text[i - 1].isalnum() or text[i - 1] in "_$")):
            tag = _DOLLAR_TAG.match(text, i)
            if tag:
                close_at = text.find(tag.group(0), tag.end())
                i = n if close_at < 0 else close_at + len(tag.group(0))
                continue
        word = _WORD.match(text, i)
        if word and (i == 0 or not (text[i - 1].isalnum() or text[i - 1] in "_$")):
            atomic_depth = _track_atomic(word.group(0).upper(), words, atomic_depth)
            i = word.end()
            continue
        i += 1
    if start < n:
        close(n, "sql" if first >= 0 else "blank")
    return segments


def _track_atomic(word: str, words: list[str], depth: int) -> int:
    """psql's rule: in CREATE [OR REPLACE] FUNCTION/PROCEDURE, BEGIN/CASE open a block, END closes it."""
    if len(words) < 4:
        words.append(word)
    is_routine = bool(words) and words[0] == "CREATE" and any(w in ("FUNCTION", "PROCEDURE") for w in words)
    if not is_routine:
        return depth
    if word == "BEGIN" or (word == "CASE" and depth > 0):
        return depth + 1
    if word == "END" and depth > 0:
        return depth - 1
    return depth


def statements(text: str) -> list[Segment]:
    """Only the segments that hold SQL or a meta-command."""
    return [s for s in split(text) if s.kind != "blank"]


def map_code(text: str, fn: Callable[[str], str]) -> str:
    """Apply ``fn`` to the parts of ``text`` that are code: not string literals, not comments.

    Dollar-quoted bodies count as code (they are function bodies); a string that ``fn`` would match
    is left alone.
    """
    out: list[str] = []
    code_start = i = 0
    n = len(text)

    def flush(end: int, literal_end: int) -> None:
        nonlocal code_start
        out.append(fn(text[code_start:end]))
        out.append(text[end:literal_end])
        code_start = literal_end

    while i < n:
        if text.startswith("--", i):
            nl = text.find("\n", i)
            end = n if nl < 0 else nl + 1
            flush(i, end)
            i = end
        elif text.startswith("/*", i):
            end = _skip_block_comment(text, i)
            flush(i, end)
            i = end
        elif text[i] == "'":
            escape = i > 0 and text[i - 1] in "eE" and (i < 2 or not (text[i - 2].isalnum() or text[i - 2] in "_$"))
            end = _skip_quoted(text, i, "'", escape)
            flush(i, end)
            i = end
        elif text[i] == '"':
            i = _skip_quoted(text, i, '"', False)
        else:
            i += 1
    out.append(fn(text[code_start:]))
    return "".join(out)

"""Retrying cloud API calls: bounded exponential backoff, create-at-most-once, and polling.

The sleep is a module attribute (and a constructor argument of every cloud provider) so tests run the
fault paths without waiting. Nothing here knows a provider: each one says which errors are transient.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TypeVar

from postgressor.errors import PostgressorError

T = TypeVar("T")
Sleep = Callable[[float], None]
Log = Callable[[str], None]

sleep: Sleep = time.sleep  # replaced in tests


def _default_sleep(seconds: float) -> None:
    sleep(seconds)  # looked up at call time, so patching the module attribute is enough


@dataclass
class Backoff:
    """``attempts`` tries in all, waiting base, 2*base, 4*base … (capped) in between."""

    attempts: int = 6
    base: float = 2.0
    cap: float = 60.0
    sleep: Sleep = field(default=_default_sleep)

    def delays(self) -> Iterator[float]:
        for n in range(self.attempts - 1):
            yield min(self.cap, self.base * 2**n)


def short(err: BaseException) -> str:
    """An error as one line, without the request dumps some SDKs append (OCI puts a dict in str())."""
    message, code = getattr(err, "message", None), getattr(err, "code", None)
    text = f"{code}: {message}" if isinstance(message, str) and code else str(message or err).strip()
    text = text.splitlines()[0] if text else type(err).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def call(what: str, fn: Callable[[], T], transient: Callable[[BaseException], bool], backoff: Backoff,
         log: Log) -> T:  # fmt: skip
    """Run ``fn``, retrying transient failures. Only for reads and idempotent writes (deletes, updates)."""
    delays = backoff.delays()
    while True:
        try:
            return fn()
        except Exception as err:
            delay = next(delays, None) if transient(err) else None
            if delay is None:
                raise
            log(f"{what}: {short(err)}; retrying in {delay:.0f} s")
            backoff.sleep(delay)


def create_once(what: str, create: Callable[[], T], find: Callable[[], T | None],
                transient: Callable[[BaseException], bool], backoff: Backoff, log: Log) -> T:  # fmt: skip
    """Create a resource without ever making two: after a failed create, look before trying again.

    A 5xx or timeout can arrive after the provider already created the thing; a blind retry would then
    make (and bill) a second one. ``find`` must find it by the stack's label/tag or unique name.
    """
    delays = backoff.delays()
    while True:
        try:
            return create()
        except Exception as err:
            delay = next(delays, None) if transient(err) else None
            if delay is None:
                raise
            log(f"{what}: {short(err)}; checking whether it was created anyway, then retrying in {delay:.0f} s")
            backoff.sleep(delay)
            found = find()
            if found is not None:
                return found


def poll(what: str, fetch: Callable[[], T], done: Callable[[T], bool], timeout: float, interval: float,
         backoff: Backoff) -> T:  # fmt: skip
    """Fetch until ``done``; the elapsed time is counted in sleeps, so a fake sleep keeps tests fast."""
    waited = 0.0
    while True:
        value = fetch()
        if done(value):
            return value
        if waited >= timeout:
            raise PostgressorError(
                f"{what} did not finish within {int(timeout)} s; run the command again to keep waiting, "
                "or 'postgressor destroy' to remove what was created"
            )
        backoff.sleep(interval)
        waited += interval

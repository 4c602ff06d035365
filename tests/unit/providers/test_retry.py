"""The shared retry layer: bounded backoff, create-at-most-once, polling counted in (fake) sleeps."""

from __future__ import annotations

import pytest
from pydantic import SecretStr

from postgressor.config import Settings, masked_dump
from postgressor.errors import PostgressorError
from postgressor.providers import retry


class Flaky(Exception):
    pass


class Fatal(Exception):
    pass


def backoff(sleeps: list[float], attempts: int = 4) -> retry.Backoff:
    return retry.Backoff(attempts=attempts, base=1, cap=3, sleep=sleeps.append)


def transient(err: BaseException) -> bool:
    return isinstance(err, Flaky)


def test_delays_double_up_to_the_cap() -> None:
    assert list(retry.Backoff(attempts=6, base=2, cap=10).delays()) == [2, 4, 8, 10, 10]


def test_call_retries_transient_errors_then_succeeds() -> None:
    sleeps: list[float] = []
    outcomes = [Flaky("429"), Flaky("503"), "ok"]

    def fn() -> str:
        item = outcomes.pop(0)
        if isinstance(item, Exception):
            raise item
        return item

    assert retry.call("x", fn, transient, backoff(sleeps), lambda line: None) == "ok"
    assert sleeps == [1, 2]


def test_call_gives_up_after_the_attempts() -> None:
    sleeps: list[float] = []
    calls = []

    def fn() -> None:
        calls.append(1)
        raise Flaky("503")

    with pytest.raises(Flaky):
        retry.call("x", fn, transient, backoff(sleeps, attempts=3), lambda line: None)
    assert len(calls) == 3 and sleeps == [1, 2]


def test_call_does_not_retry_other_errors() -> None:
    sleeps: list[float] = []
    with pytest.raises(Fatal):
        retry.call("x", lambda: (_ for _ in ()).throw(Fatal("401")), transient, backoff(sleeps), lambda line: None)
    assert sleeps == []


def test_create_once_looks_before_creating_again() -> None:
    created: list[str] = []

    def create() -> str:
        created.append("server")
        raise Flaky("500 after the server was made")

    found = retry.create_once("x", create, lambda: created[0] if created else None, transient,
                              backoff([]), lambda line: None)
    assert found == "server" and len(created) == 1


def test_create_once_retries_when_nothing_was_created() -> None:
    attempts = [Flaky("429"), None]

    def create() -> str:
        err = attempts.pop(0)
        if err:
            raise err
        return "made"

    assert retry.create_once("x", create, lambda: None, transient, backoff([]), lambda line: None) == "made"


def test_poll_times_out_by_counting_sleeps() -> None:
    sleeps: list[float] = []
    with pytest.raises(PostgressorError, match="did not finish within 10 s"):
        retry.poll("boot", lambda: "initializing", lambda s: s == "running", timeout=10, interval=5,
                   backoff=backoff(sleeps))
    assert sleeps == [5, 5]


def test_module_sleep_is_the_default_and_patchable(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[float] = []
    monkeypatch.setattr(retry, "sleep", seen.append)
    retry.Backoff().sleep(7)
    assert seen == [7]


def test_short_uses_code_and_message() -> None:
    class SdkError(Exception):
        code, message = "TooManyRequests", "slow down\nrequest dump"

    assert retry.short(SdkError("{'huge': 'dict'}")) == "TooManyRequests: slow down"


def test_cloud_secrets_are_masked() -> None:
    settings = Settings(hetzner={"token": SecretStr("tok-123")}, ovh={"application_secret": SecretStr("s-456")},
                        oracle={"pass_phrase": SecretStr("p-789")})  # type: ignore[arg-type]
    dumped = str(masked_dump(settings))
    assert "tok-123" not in dumped and "s-456" not in dumped and "p-789" not in dumped

"""Credentials in URLs and conninfo strings, masked before anything is shown or logged.

Standard library only: the gateway (shipped to the box) imports it too.
"""

from __future__ import annotations

import re

MASK = "***"
# user:password@ or token@ in a URL's authority (RFC 3986 section 3.2.1, userinfo).
# A password may hold spaces (libpq accepts them unencoded): it runs to the '@'; over-masking is the safe side.
_USERINFO = re.compile(r"(?P<scheme>\b[a-z][a-z0-9+.-]*://)(?P<user>[^:/?#@\s]*)(?::(?P<pw>[^/?#@\n]*))?@", re.I)
# Query parameters that carry a credential (Supabase's apikey, OAuth's access_token, S3's presigned signature...).
_SECRET_PARAMS = ("apikey", "api_key", "key", "token", "access_token", "secret", "password", "passwd", "pwd", "auth",
                  "signature", "sig", "x-amz-signature", "x-amz-credential", "x-amz-security-token")  # fmt: skip
_PARAMS = "|".join(re.escape(p) for p in _SECRET_PARAMS)
_QUERY = re.compile(rf"(?P<head>[?&;](?:{_PARAMS})=)(?P<value>[^&#\s]*)", re.I)
# password=... in a libpq key=value conninfo.
_KV_PASSWORD = re.compile(r"(?P<head>\bpassword\s*=\s*)(?P<pw>'(?:[^'\\]|\\.)*'|\S+)", re.IGNORECASE)


def _userinfo(match: re.Match[str]) -> str:
    if match["pw"] is not None:  # the user name stays (it says who), the password goes
        return f"{match['scheme']}{match['user']}:{MASK}@"
    if match["scheme"].lower().startswith(("http", "ws")):  # a lone userinfo on the web is a token (https://T@h/)
        return f"{match['scheme']}{MASK}@"
    return match[0]  # postgresql://user@host: a user name, no secret


def mask_url(text: str) -> str:
    """``text`` with every credential in it replaced by ``***``: a URL's password (or a lone userinfo, which
    is a token on http(s)), credential query parameters (apikey=, token=, signature=...) and conninfo ``password=``."""
    text = _USERINFO.sub(_userinfo, text)
    text = _QUERY.sub(lambda m: f"{m['head']}{MASK}", text)
    return _KV_PASSWORD.sub(lambda m: f"{m['head']}{MASK}", text)


def mask_urls_in(data: object) -> object:
    """``data`` (JSON-shaped: dicts, lists, strings) with ``mask_url`` applied to every string in it."""
    if isinstance(data, str):
        return mask_url(data)
    if isinstance(data, dict):
        return {key: mask_urls_in(value) for key, value in data.items()}
    if isinstance(data, list):
        return [mask_urls_in(value) for value in data]
    return data

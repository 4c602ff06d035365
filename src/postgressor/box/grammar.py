"""Grammars of the config values that reach the box: a Docker image reference, a DNS hostname, an email address.

Each ``*_problem`` returns ``""`` for a valid value or one line saying what is wrong; config.py calls them at load.
"""

from __future__ import annotations

import re

from email_validator import EmailNotValidError, validate_email

# The image reference grammar of github.com/distribution/reference (v0.6.0, regexp.go and reference.go), the one
# Docker parses `docker pull NAME` with:
#   reference        := name [ ":" tag ] [ "@" digest ]
#   name             := [domain '/'] remote-name
#   domain           := host [':' port-number]
#   host             := domain-name | IPv4address | \[ IPv6address \]
#   domain-name      := domain-component ['.' domain-component]*
#   domain-component := /([a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])/
#   remote-name      := path-component ['/' path-component]*
#   path-component   := alpha-numeric [separator alpha-numeric]*
#   alpha-numeric    := /[a-z0-9]+/
#   separator        := /[_.]|__|[-]+/
#   tag              := /[\w][\w.-]{0,127}/
#   digest           := algorithm ":" hex  (algorithm /[A-Za-z][A-Za-z0-9]*([-_+.][A-Za-z][A-Za-z0-9]*)*/, hex {32,})
# and NameTotalLengthMax = 255. Go's \w is ASCII, hence re.ASCII.
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[a-fA-F0-9:]+\])(?::[0-9]+)?"
_PATH_COMPONENT = r"[a-z0-9]+(?:(?:[_.]|__|[-]+)[a-z0-9]+)*"
_NAME = rf"(?:{_DOMAIN}/)?{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*"
_TAG = r"[\w][\w.-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"
IMAGE_REFERENCE = re.compile(rf"(?P<name>{_NAME})(?::{_TAG})?(?:@{_DIGEST})?", re.ASCII)
NAME_TOTAL_LENGTH_MAX = 255

# RFC 1123 host names: labels of letters, digits and inner hyphens, at most 63 octets each and 253 in all;
# internationalised names in their ASCII (xn--) form. The last label is not all digits (that is an address).
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
HOSTNAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})+", re.ASCII)


def image_problem(value: str) -> str:
    """Why ``value`` is not a Docker image reference (``registry[:port]/path:tag@digest``), or ``""``."""
    match = IMAGE_REFERENCE.fullmatch(value)
    if not match:
        return (f"{value!r} is not a Docker image reference; use one like electricsql/electric:1.7.12 or "
                "registry.example.com:5000/mirror/electric:1.7.12")  # fmt: skip
    if len(match.group("name")) > NAME_TOTAL_LENGTH_MAX:
        return f"the image name is longer than {NAME_TOTAL_LENGTH_MAX} characters"
    return ""


def hostname_problem(value: str) -> str:
    """Why ``value`` is not a fully qualified DNS host name like ``sync.example.com``, or ``""``."""
    if len(value) > 253 or not HOSTNAME.fullmatch(value) or value.rsplit(".", 1)[1].isdigit():
        return (f"{value!r} is not a host name; use the DNS name that points at the box, like sync.example.com "
                "(internationalised names in their xn-- form)")  # fmt: skip
    return ""


def email_problem(value: str) -> str:
    """Why ``value`` is not an email address (RFC 5322 syntax, checked by email-validator; no DNS), or ``""``."""
    if any(not ch.isprintable() or ch.isspace() for ch in value):
        return f"{value!r} is not an email address: it holds a space or control character"
    if any(ch in value for ch in '{}"\\'):
        # Legal in a quoted local part, but Caddy substitutes {$VAR} before it reads quotes: keep them out.
        return f"{value!r}: use an email address without braces, quotes or backslashes"
    try:
        validate_email(value, check_deliverability=False)
    except EmailNotValidError as err:
        return f"{value!r} is not an email address: {err}"
    return ""

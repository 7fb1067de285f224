"""Secrets in a spec: the storage URL's password, masked for display and redacted from text.

A spec names its storage as `env:VAR` to keep the URL (and its password) out of the
file; these helpers find the password in a URL, mask it, and scrub it from any text
(logs, reports, error messages).
"""

from __future__ import annotations

import re
from urllib.parse import unquote

ENV_PREFIX = "env:"
_URL_PASSWORD = re.compile(r"^(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^:/@]*:)(?P<password>[^@]*)(?P<tail>@.*)$")


def url_secrets(url: str) -> list[str]:
    """The password in `scheme://user:password@host/...` (and its %-decoded form), or []."""
    match = _URL_PASSWORD.match(url or "")
    if not match or not match["password"]:
        return []
    password = match["password"]
    return sorted({password, unquote(password)}, key=len, reverse=True)


def mask_url(url: str) -> str:
    """`postgresql://sweep:SECRET@host/db` -> `postgresql://sweep:***@host/db`."""
    match = _URL_PASSWORD.match(url or "")
    if not match or not match["password"]:
        return url
    return f"{match['head']}***{match['tail']}"


def redact(text: str, secrets: list[str]) -> str:
    """`text` with every secret replaced by ***."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text

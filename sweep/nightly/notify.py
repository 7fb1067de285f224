"""`sweep nightly --notify URL`: a small JSON summary POSTed to a webhook, Slack-compatible.

The body has `text` (what Slack, Mattermost, Teams workflows and most chat webhooks show)
and the same facts as fields (verdict, regressions with their numbers, where the report
is). Transient failures (no connection, a timeout, HTTP 429 or 5xx) are retried with
backoff; a notification that still fails is reported on stderr and in nightly.json, and
never changes the nightly's exit code.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import urlsplit

ATTEMPTS = 4
BACKOFF_S = 1.0  # seconds before the first retry, doubled after each
TIMEOUT_S = 10.0  # seconds per attempt


def url_problem(url: str) -> str | None:
    """Why `url` cannot be a webhook (checked before any work), or None."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return f"--notify {url!r}: give an http:// or https:// webhook URL"
    return None


def post_json(
    url: str,
    payload: dict[str, Any],
    *,
    attempts: int = ATTEMPTS,
    backoff_s: float = BACKOFF_S,
    timeout_s: float = TIMEOUT_S,
) -> tuple[bool, str]:
    """POST `payload` as JSON. Returns (delivered, what happened in words); never raises."""
    if url_problem(url):
        return False, str(url_problem(url))
    body = json.dumps(payload).encode()
    problem = "not tried"
    for attempt in range(1, attempts + 1):
        request = urllib.request.Request(
            url, data=body, method="POST", headers={"Content-Type": "application/json", "User-Agent": "sweep-nightly"}
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout_s) as response:  # noqa: S310 - the user's URL
                return True, f"HTTP {response.status} after {attempt} attempt(s)"
        except urllib.error.HTTPError as exc:
            problem = f"HTTP {exc.code} {exc.reason}"
            if exc.code != 429 and exc.code < 500:
                return False, f"{problem} (not retried: the webhook refused the request)"
        except (urllib.error.URLError, TimeoutError, OSError) as exc:
            problem = str(getattr(exc, "reason", exc))
        if attempt < attempts:
            time.sleep(backoff_s * 2 ** (attempt - 1))
    return False, f"{problem} (after {attempts} attempts)"


def payload(night: dict[str, Any]) -> dict[str, Any]:
    """The webhook body for a night record (see sweep.nightly.night): `text` plus the facts."""
    verdict = night["verdict"]
    head = {
        "ok": f"sweep nightly {night['study']}: no regression",
        "regression": f"sweep nightly {night['study']}: REGRESSION",
        "error": f"sweep nightly {night['study']}: could not complete",
    }[verdict]
    lines = [head]
    lines += [f"- {r['text']}" for r in night.get("regressions", [])]
    if night.get("error"):
        lines.append(night["error"])
    lines += night.get("information", [])
    if night.get("report"):
        lines.append(f"report: {night['report']}")
    if night.get("trend"):
        lines.append(f"trend: {night['trend']}")
    return {
        "text": "\n".join(lines),
        "verdict": verdict,
        "exit_code": night["exit_code"],
        "date": night["date"],
        "study": night["study"],
        "previous": night.get("previous"),
        "regressions": night.get("regressions", []),
        "report": night.get("report"),
        "trend": night.get("trend"),
    }

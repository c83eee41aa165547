"""A small client of the Ray Jobs REST API (the dashboard's ``/api/jobs/``), for ``dip status``,
``dip logs`` and ``dip submit --wait``: standard library only, so those commands start without
importing Ray. Submitting (which packages the working directory) stays with Ray's own
``JobSubmissionClient``.

Token authentication is honoured as Ray reads it: with ``RAY_AUTH_MODE=token``, the token is
``RAY_AUTH_TOKEN``, else the file named by ``RAY_AUTH_TOKEN_PATH``, else ``~/.ray/auth_token``,
sent as ``Authorization: Bearer <token>``.
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import click

TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
TOKEN_HINT = ("This cluster requires a token: set RAY_AUTH_MODE=token and RAY_AUTH_TOKEN (or ~/.ray/auth_token) "
              "to the cluster's token.")


def auth_token() -> str | None:
    """The token Ray would send, or None (token mode off, or no token found)."""
    if os.environ.get("RAY_AUTH_MODE", "").lower() != "token":
        return None
    if os.environ.get("RAY_AUTH_TOKEN"):
        return os.environ["RAY_AUTH_TOKEN"].strip()
    path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


class JobsAPI:
    """GET requests to one cluster's Jobs API; errors become click.ClickException naming the address."""

    def __init__(self, address: str, timeout_s: float = 30.0):
        self.address, self.timeout_s = address.rstrip("/"), timeout_s

    def _get(self, path: str) -> dict | None:
        """The JSON body of GET <address><path>; None for 404 (no such job)."""
        request = urllib.request.Request(self.address + path, headers={"Accept": "application/json"})
        token = auth_token()
        if token:
            request.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as error:
            if error.code == 404:
                return None
            detail = f"HTTP {error.code} {error.reason}"
            if error.code in (401, 403):
                detail += "\n" + TOKEN_HINT
            raise click.ClickException(f"cannot reach the Ray cluster at {self.address}: {detail}") from None
        except (OSError, ValueError) as error:  # connection refused, bad address, not JSON
            raise click.ClickException(f"cannot reach the Ray cluster at {self.address}: {error}") from None

    def info(self, job_id: str) -> dict | None:
        """The job's details (status, message, ...), or None when there is no such job."""
        return self._get(f"/api/jobs/{urllib.parse.quote(job_id, safe='')}")

    def status(self, job_id: str) -> str | None:
        info = self.info(job_id)
        return None if info is None else str(info.get("status"))

    def logs(self, job_id: str) -> str:
        body = self._get(f"/api/jobs/{urllib.parse.quote(job_id, safe='')}/logs")
        if body is None:
            raise click.ClickException(f"no job {job_id} on {self.address}")
        return body.get("logs") or ""

    def follow(self, job_id: str, poll_s: float = 2.0) -> str:
        """Print the job's logs as they grow until it ends; returns its final status."""
        shown = 0
        while True:
            status = self.status(job_id)
            if status is None:
                raise click.ClickException(f"no job {job_id} on {self.address}")
            logs = self.logs(job_id)
            click.echo(logs[shown:], nl=False)
            shown = len(logs)
            if status in TERMINAL:
                return status
            time.sleep(poll_s)

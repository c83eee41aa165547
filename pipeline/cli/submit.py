"""``dip submit``, ``dip status``, ``dip logs``: the batch job as a Ray Job on a cluster.

The submission id is derived from the run (manifest, output, options, UTC date), so a
nightly cron that fires twice submits once. Ray's token authentication is honoured as Ray
itself reads it: ``RAY_AUTH_MODE=token`` with ``RAY_AUTH_TOKEN`` or ``~/.ray/auth_token``.
``dip status``, ``dip logs`` and ``--wait`` use the Jobs REST API directly (``jobs_api``), without
importing Ray; only submitting uses Ray's client, which packages the working directory.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import shlex
import sys
import time
from pathlib import Path

import click

from .jobs_api import TOKEN_HINT, JobsAPI
from .options import (
    EXIT_BROKE_OFF,
    EXIT_IMAGES_FAILED,
    EXIT_NOT_STARTED,
    EXIT_OK,
    batch_options,
    dashboard_option,
    parse_json_object,
)

PROJECT_ROOT = Path(__file__).resolve().parents[2]
SECRET_NAMES = ("key", "secret", "token", "password", "credential", "session")
RUNTIME_EXCLUDES = [".venv", ".git", "out", "benchmarks/results", "**/__pycache__", "*.egg-info"]


def make_submission_id(arguments: list[str], today: dt.date | None = None) -> str:
    """dip-<hash of the run's arguments>-<UTC date>: equal for a double-fired cron."""
    today = today or dt.datetime.now(dt.timezone.utc).date()
    digest = hashlib.sha256(json.dumps(arguments).encode()).hexdigest()[:12]
    return f"dip-{digest}-{today:%Y%m%d}"


def check_no_secrets(storage_options: dict) -> None:
    """Submitted options are visible in the job's entrypoint: refuse credentials there."""
    secret = sorted(k for k in storage_options if any(word in k.lower() for word in SECRET_NAMES))
    if secret:
        raise click.BadParameter(
            f"{', '.join(secret)}: credentials would be visible in the Ray Job's entrypoint; give the cluster's "
            "nodes their own credentials (an instance role or environment variables) instead",
            param_hint="--storage-options")


def job_client(address: str):
    from ray.job_submission import JobSubmissionClient

    try:
        return JobSubmissionClient(address)
    except Exception as error:  # noqa: BLE001  (connection refused, auth failure, bad address)
        text = str(error)
        if "401" in text or "403" in text or "auth" in text.lower():
            text += "\n" + TOKEN_HINT
        raise click.ClickException(f"cannot reach the Ray cluster at {address}: {text}") from None


@click.command()
@dashboard_option
@batch_options()
@click.option("--submission-id", help="Default: derived from the run's arguments and the UTC date.")
@click.option("--wait", is_flag=True, help="Follow the job's logs until it ends; exit with its outcome.")
def submit(address, submission_id: str | None, wait: bool, **values):
    """Submit ``dip run`` as a Ray Job (working directory packaged, entrypoint jobs/run_batch.py)."""
    check_no_secrets(parse_json_object(values["storage_options"], "--storage-options"))
    arguments = _run_arguments(values, click.get_current_context().command.params)
    job_id = submission_id or make_submission_id(arguments)
    api = JobsAPI(address)
    entrypoint = "python jobs/run_batch.py " + shlex.join(arguments)
    existing = api.status(job_id)
    if existing is None:
        _submit(job_client(address), entrypoint=entrypoint, submission_id=job_id,
                runtime_env={"working_dir": str(PROJECT_ROOT), "excludes": RUNTIME_EXCLUDES},
                metadata={"tool": "dip"})
        click.echo(f"submitted {job_id}")
    else:
        click.echo(f"{job_id} was already submitted ({existing}); not submitting it again")
    if wait:
        sys.exit(_follow(api, job_id))


@click.command()
@click.argument("submission_id")
@dashboard_option
def status(submission_id, address):
    """The status of a submitted run."""
    state = JobsAPI(address).status(submission_id)
    if state is None:
        raise click.ClickException(f"no job {submission_id} on {address}")
    click.echo(state)


@click.command()
@click.argument("submission_id")
@dashboard_option
@click.option("--follow", is_flag=True, help="Keep printing until the job ends.")
def logs(submission_id, address, follow):
    """The logs of a submitted run."""
    api = JobsAPI(address)
    if follow:
        sys.exit(_follow(api, submission_id))
    click.echo(api.logs(submission_id), nl=False)


def _submit(client, wait_s: float = 120.0, **job) -> None:
    """Submit, waiting while a just-started head has no job agent yet ("No available agent")."""
    deadline = time.monotonic() + wait_s
    delay = 1.0
    while True:
        try:
            client.submit_job(**job)
            return
        except RuntimeError as error:
            if "No available agent" not in str(error) or time.monotonic() + delay > deadline:
                raise click.ClickException(f"could not submit {job['submission_id']}: {error}") from None
        time.sleep(delay)
        delay = min(delay * 2, 10.0)


def _run_arguments(kwargs: dict, params: list[click.Parameter]) -> list[str]:
    """``dip run`` options for the entrypoint, in a stable order, spelled as the command's own long
    flags (``--time-limit`` for time_limit_s; ``--no-tiling`` for tiling=False; ``--output``, not ``-o``)."""
    options = {p.name: p for p in params if isinstance(p, click.Option)}
    arguments = []
    for name, value in sorted(kwargs.items()):
        option = options[name]
        flag = next(o for o in option.opts if o.startswith("--"))
        if value is None:
            continue
        if option.secondary_opts:  # --x/--no-x
            arguments.append(flag if value else option.secondary_opts[0])
        elif option.is_flag:
            arguments += [flag] if value else []
        else:
            arguments += [flag, str(value)]
    return arguments


def _follow(api: JobsAPI, job_id: str) -> int:
    """Print the job's logs as they come; the exit code follows the job's outcome."""
    state = api.follow(job_id)
    click.echo(f"{job_id}: {state}")
    if state == "SUCCEEDED":
        return EXIT_OK
    message = (api.info(job_id) or {}).get("message") or ""
    for code in (EXIT_IMAGES_FAILED, EXIT_BROKE_OFF):
        if f"exit code {code}" in message:
            return code
    return EXIT_NOT_STARTED

"""``dip submit``, ``dip status``, ``dip logs``: the batch job as a Ray Job on a cluster.

The submission id is derived from the run (manifest, output, options, UTC date), so a
nightly cron that fires twice submits once. Ray's token authentication is honoured as Ray
itself reads it: ``RAY_AUTH_MODE=token`` with ``RAY_AUTH_TOKEN`` or ``~/.ray/auth_token``.
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

from .cli_run import BATCH_OPTIONS, EXIT_IMAGES_FAILED, EXIT_NOT_STARTED, EXIT_OK, parse_json_object, with_options

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SECRET_NAMES = ("key", "secret", "token", "password", "credential", "session")
RUNTIME_EXCLUDES = [".venv", ".git", "out", "benchmarks/results", "**/__pycache__", "*.egg-info"]


def submission_id(arguments: list[str], today: dt.date | None = None) -> str:
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
    except Exception as error:  # connection refused, auth failure, bad address
        text = str(error)
        if "401" in text or "403" in text or "auth" in text.lower():
            text += ("\nThis cluster requires a token: set RAY_AUTH_MODE=token and RAY_AUTH_TOKEN (or "
                     "~/.ray/auth_token) to the cluster's token.")
        raise click.ClickException(f"cannot reach the Ray cluster at {address}: {text}") from None


def register(main: click.Group) -> None:
    @main.command()
    @click.option("--address", required=True, envvar="RAY_ADDRESS", help="Ray dashboard, e.g. http://HEAD:8265.")
    @with_options(BATCH_OPTIONS)
    @click.option("--submission-id", help="Default: derived from the run's arguments and the UTC date.")
    @click.option("--wait", is_flag=True, help="Follow the job's logs until it ends; exit with its outcome.")
    def submit(address, submission_id: str | None, wait: bool, **kwargs):
        """Submit ``dip run`` as a Ray Job (working directory packaged, entrypoint jobs/run_batch.py)."""
        check_no_secrets(parse_json_object(kwargs["storage_options"], "--storage-options"))
        arguments = _run_arguments(kwargs, click.get_current_context().command.params)
        job_id = submission_id or globals()["submission_id"](arguments)
        client = job_client(address)
        entrypoint = "python jobs/run_batch.py " + shlex.join(arguments)
        existing = _status(client, job_id)
        if existing is None:
            _submit(client, entrypoint=entrypoint, submission_id=job_id,
                    runtime_env={"working_dir": str(PROJECT_ROOT), "excludes": RUNTIME_EXCLUDES},
                    metadata={"tool": "dip"})
            click.echo(f"submitted {job_id}")
        else:
            click.echo(f"{job_id} was already submitted ({existing}); not submitting it again")
        if wait:
            sys.exit(_follow(client, job_id))

    @main.command()
    @click.argument("submission_id")
    @click.option("--address", required=True, envvar="RAY_ADDRESS", help="Ray dashboard, e.g. http://HEAD:8265.")
    def status(submission_id, address):
        """The status of a submitted run."""
        state = _status(job_client(address), submission_id)
        if state is None:
            raise click.ClickException(f"no job {submission_id} on {address}")
        click.echo(state)

    @main.command()
    @click.argument("submission_id")
    @click.option("--address", required=True, envvar="RAY_ADDRESS", help="Ray dashboard, e.g. http://HEAD:8265.")
    @click.option("--follow", is_flag=True, help="Keep printing until the job ends.")
    def logs(submission_id, address, follow):
        """The logs of a submitted run."""
        client = job_client(address)
        if follow:
            sys.exit(_follow(client, submission_id))
        click.echo(client.get_job_logs(submission_id), nl=False)


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
    """``dip run`` options for the entrypoint, in a stable order, spelled as the command's own
    flags (``--time-limit`` for time_limit_s; ``--no-tiling`` for tiling=False)."""
    options = {p.name: p for p in params if isinstance(p, click.Option)}
    arguments = []
    for name, value in sorted(kwargs.items()):
        option = options[name]
        if value is None:
            continue
        if option.secondary_opts:  # --x/--no-x
            arguments.append(option.opts[0] if value else option.secondary_opts[0])
        elif option.is_flag:
            arguments += [option.opts[0]] if value else []
        else:
            arguments += [option.opts[0], str(value)]
    return arguments


def _status(client, job_id: str) -> str | None:
    try:
        return str(client.get_job_status(job_id).value)
    except RuntimeError as error:  # the SDK raises RuntimeError for an unknown job id
        if "does not exist" in str(error) or "404" in str(error):
            return None
        raise


def _follow(client, job_id: str) -> int:
    """Print the job's logs as they come; the exit code follows the job's outcome."""
    import asyncio

    async def tail():
        async for lines in client.tail_job_logs(job_id):
            click.echo(lines, nl=False)

    asyncio.run(tail())
    state = _status(client, job_id)
    click.echo(f"{job_id}: {state}")
    if state == "SUCCEEDED":
        return EXIT_OK
    info = client.get_job_info(job_id)
    return EXIT_IMAGES_FAILED if f"exit code {EXIT_IMAGES_FAILED}" in (info.message or "") else EXIT_NOT_STARTED

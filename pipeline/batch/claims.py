"""Fit claims: a durable note, written before each fit starts, that counts a run's starts per image.

A fit actor writes ``claims/<run_id>/<image_id>/<config_hash>/<writer>-<uuid>.json`` (``writer``: the
id of the actor's shard writer, whose shards hold the rows it stores; inside, the Ray node, host and
process) before it reads and fits the image. The claims outlive the worker: when a node is lost (a
spot instance preempted) or a worker is killed, Ray starts the batch again on another actor, and each
of its images finds its earlier claims. An earlier start whose row its writer stored (in a shard
``shard-<run_id>-<writer>-*``) finished: the image is not fitted again, its stored row stands. The
others were lost with their worker; once ``max_fit_attempts`` of them are counted, the image is
refused (an error row, ``FitLost``), so that a poison image that kills its node each time cannot take
down node after node.

Only the run's own claims count: a rerun (a new run id) starts from zero, so a driver killed mid-run
never blocks the rerun with stale claims, and an image refused in one run is tried again by the next,
as any error row is. The driver deletes its run's claims once the run has ended; those of a run that
was killed stay under ``claims/<run_id>/``, read by nothing (delete them whenever no run is going).
Costs: one listing and one write per image; more only for the images of a retried batch.
"""

from __future__ import annotations

import json
import os
import socket
import uuid

from .. import storage

FOLDER = "claims"


class FitLost(RuntimeError):
    """An image whose fit was started ``max_fit_attempts`` times in a run, its worker lost each time."""


def folder(output: str, run_id: str, image_id: str, config_hash: str, storage_options: dict | None = None) -> str:
    """The claims of one image and configuration in one run."""
    return storage.under(output, FOLDER, run_id, storage.safe_key(image_id), config_hash,
                         storage_options=storage_options)


def earlier(output: str, run_id: str, image_id: str, config_hash: str,
            storage_options: dict | None = None) -> list[str]:
    """The writers of this run's earlier starts of the image's fit, one per start (one listing)."""
    urls = storage.list_files(folder(output, run_id, image_id, config_hash, storage_options), storage_options)
    return [url.rsplit("/", 1)[-1].split("-", 1)[0] for url in urls]


def claim(output: str, run_id: str, image_id: str, config_hash: str, storage_options: dict | None = None, *,
          writer: str, node: str | None = None, started_at: str | None = None) -> str:
    """Write one claim: a start of the image's fit by ``writer`` (a shard writer's id), on ``node``."""
    if not writer.isalnum():
        raise ValueError(f"a claim's writer id must be letters and digits, got {writer!r}")
    url = storage.under(folder(output, run_id, image_id, config_hash, storage_options),
                        f"{writer}-{uuid.uuid4().hex[:8]}.json", storage_options=storage_options)
    storage.write_json(url, {"run_id": run_id, "image_id": image_id, "config_hash": config_hash, "writer": writer,
                             "node": node, "host": socket.gethostname(), "pid": os.getpid(),
                             "started_at": started_at}, storage_options)
    return url


def check(image_id: str, lost: int, max_fit_attempts: int) -> None:
    """FitLost, naming the image, the count and the cause, once ``lost`` starts reach the limit."""
    if lost >= max_fit_attempts:
        raise FitLost(f"{image_id}: its fit was started {lost} times in this run and its worker died each time "
                      f"(node lost or process killed); not started again (--max-fit-attempts {max_fit_attempts})")


def read(output: str, run_id: str, storage_options: dict | None = None) -> list[dict]:
    """Every claim of a run (for tests and post-mortems: one listing and one read per claim)."""
    urls = storage.list_files(storage.under(output, FOLDER, run_id, storage_options=storage_options), storage_options)
    return [json.loads(storage.read_bytes(url, storage_options)) for url in urls]


def remove(output: str, run_id: str, storage_options: dict | None = None) -> None:
    """Delete a run's claims (at its end), and on a local disk the folders they leave empty."""
    claimed = storage.under(output, FOLDER, run_id, storage_options=storage_options)
    storage.delete(list(storage.list_files(claimed, storage_options)), storage_options,
                   below=storage.under(output, FOLDER, storage_options=storage_options))

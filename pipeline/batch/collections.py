"""Warm starts for collections: before the fits, a run learns each collection's initial weights.

Rows with the ``collection`` warm start (``--warm-start collection``) name their weights in
``warm_weights``: ``warm/<collection>.pt`` under the output (``manifest.collection_weights``; the
manifest's ``collection`` column, else one collection, ``all``). For every such file not stored yet,
one Ray task (with a fit's resources) reads the first ``IMAGES`` rows of the collection as their
fits will see them, learns initial weights from them (``pipeline.core.collection.learn_initial``,
one set per channel count among them; inner fits of a quarter of the budget, at most
``REPTILE_ITERATIONS``) and stores the file; the fit actors then start every image
of the collection from it (``FitActor.warm_start``). A rerun finds the file and learns nothing; a
collection whose learning failed gives its rows error rows naming the missing file, and the run
says why in its warnings.
"""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .. import storage

IMAGES = 4  # rows of a collection its weights are learned on


def pending(output: str, plan_url: str, storage_options: dict | None = None) -> dict[str, list[dict]]:
    """Per weights URL of the plan not stored yet: the first ``IMAGES`` plan rows of its collection."""
    plan = pq.read_table(pa.BufferReader(storage.read_bytes(plan_url, storage_options)))
    plan = plan.filter(pc.match_substring(plan["options"], '"warm_start": "collection"'))
    groups: dict[str, list[dict]] = {}
    for row in plan.to_pylist():
        url = json.loads(row["options"])["warm_weights"]
        url = url if "://" in url or url.startswith("/") else storage.join(output, url)
        rows = groups.setdefault(url, [])
        if len(rows) < IMAGES:
            rows.append(row)
    return {url: rows for url, rows in groups.items() if not storage.exists(url, storage_options)}


def learn(output: str, plan_url: str, storage_options: dict, *, max_pixels: int, threads: int, gpus: float,
          resources: dict) -> list[str]:
    """Learn and store the weights ``pending`` lists, one Ray task per file, all at once; returns a
    warning per file that could not be learned (its rows then fail, naming it)."""
    groups = pending(output, plan_url, storage_options)
    if not groups:
        return []
    import ray

    task = ray.remote(learn_one).options(num_cpus=threads, num_gpus=gpus, resources=resources or None,
                                         max_retries=1)
    running = {url: task.remote(url, rows, storage_options, max_pixels, threads) for url, rows in groups.items()}
    warnings = []
    for url, ref in running.items():
        try:
            ray.get(ref)
        except Exception as error:  # noqa: BLE001  (a failed collection is a warning and error rows, not a crash)
            cause = getattr(error, "cause", None) or error
            warnings.append(f"warm start {url} not learned: {type(cause).__name__}: {cause}")
    return warnings


def learn_one(url: str, rows: list[dict], storage_options: dict, max_pixels: int, threads: int) -> str:
    """Read ``rows`` (plan rows of one collection) as their fits will see them, learn initial weights
    per channel count and store them at ``url``; returns ``url``."""
    from dataclasses import replace

    import torch

    from ..core.collection import REPTILE_ITERATIONS, learn_initial
    from ..core.prepare import resolve_device
    from ..core.warm import save_initial
    from .inputs import load_inputs
    from .manifest import Job

    torch.set_num_threads(max(1, threads))
    jobs = [Job.from_row(row) for row in rows]
    options = replace(jobs[0].options, device=resolve_device(jobs[0].options.device))
    by_channels: dict[int, list] = {}
    for job in jobs:
        seed = job.options.seed if job.degradation_seed is None else job.degradation_seed
        observed = load_inputs(job.uri, mask_uri=job.mask_uri, reference_uri=job.reference_uri,
                               guide_uri=job.guide_uri, degradation=job.degradation, seed=seed,
                               storage_options=storage_options, max_pixels=max_pixels).observed
        by_channels.setdefault(observed.channels, []).append(observed)
    iterations = max(1, min(REPTILE_ITERATIONS, options.resolve().fit.iterations // 4))  # short budgets: shorter
    weights = {channels: learn_initial(pictures, options, iterations=iterations)
               for channels, pictures in by_channels.items()}
    about = {"preset": options.resolve().name, "input_seed": options.seed, "collection": url,
             "images": [job.image_id for job in jobs]}
    storage.write_bytes(url, save_initial(weights, about), storage_options)
    return url

"""The batch job: a manifest in, one DIP fit per image on Ray, images and result rows out.

1. Plan (driver): stream the manifest, validate every row, drop images that already have an
   ``ok`` result for the same configuration (the manifest's keys joined against the done index,
   ``results.done_index``, in chunks), and write the rest to ``runs/<run_id>.plan.parquet``.
2. Fit (Ray Data): ``read_parquet(plan) -> map_batches(FitActor, batch_size=pack)`` on an actor
   pool sized to the cluster, over blocks of up to ``MAX_BLOCK_ROWS`` rows (``pipeline.batch.actor``);
   each actor writes its images as soon as their fit ends and their rows in shards. With ``pack`` > 1,
   same-size images of one batch share one packed fit.
3. Record (driver): wait for the actors' last shards, fold the run's shards (``compact``), write
   ``runs/<run_id>.json``, then ``_SUCCESS`` once every row has a stored result.
"""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import pyarrow as pa
import pyarrow.parquet as pq

from .. import storage
from ..core.formats import DEFAULT_MAX_PIXELS
from ..core.options import Options
from . import manifest, results
from .actor import FitActor, plain_value, utc_now
from .compact import compact

PLAN_ROW_GROUP = 1000
LOOKUP_ROWS = 20_000  # manifest rows per join against the done index
MAX_BLOCK_ROWS = 64  # plan rows per Ray Data block at most (fits stay one per image)
BLOCKS_PER_WORKER = 4  # at least, where the plan has the rows: the last blocks spread over the pool
SHARD_WAIT_S = 120.0  # how long the driver waits for the shards of rows it has seen
KEEP_OK, KEEP_FAILED = 50, 1000  # rows the driver keeps for the summary table; the results table has all


@dataclass(frozen=True)
class RunConfig:
    manifest: str
    output: str
    defaults: Options = Options()
    storage_options: dict = field(default_factory=dict)
    gpus_per_fit: float | None = None  # None: 1 when the cluster has GPUs, else 0 (CPU fits)
    cpus_per_fit: int = 1  # also the torch threads of each fit
    pack: int = 1  # same-size images fitted together in one batched computation (pipeline.core.packed)
    max_workers: int | None = None  # actors at most (None: as many as the resources allow)
    force: bool = False  # redo images that already have an ok result
    max_pixels: int = DEFAULT_MAX_PIXELS
    output_format: str = "same"  # restored files: png, tiff, or same (TIFF for a TIFF input, else PNG)
    run_id: str | None = None
    shard_rows: int = results.SHARD_ROWS  # result rows per shard at most
    shard_seconds: float = results.SHARD_SECONDS  # and the age of its oldest row at most
    compact: bool = True  # fold the run's shards into one file at the end
    strict: bool = False  # refuse a manifest with a column that looks like a misspelt known one

    def public(self) -> dict:
        """The configuration as recorded beside the outputs: storage options are left out."""
        values = asdict(self)
        values["storage_options"] = sorted(self.storage_options)  # names only, never values
        return values


@dataclass
class RunSummary:
    run_id: str
    total: int = 0  # manifest rows
    skipped: int = 0  # already ok for this configuration
    ok: int = 0
    failed: int = 0
    unrecorded: int = 0  # rows fitted whose shard never arrived (the actor died): a rerun fits them again
    warnings: list[str] = field(default_factory=list)  # about the manifest (look-alike columns)
    seconds: float = 0.0
    rows: list[dict] = field(default_factory=list)  # a sample for the summary table: failures first

    def add(self, row: dict) -> None:
        """Count one result; keep at most KEEP_FAILED failures and KEEP_OK ok rows (not millions)."""
        ok = row["status"] == "ok"
        self.ok += ok
        self.failed += not ok
        if (ok and self.ok <= KEEP_OK) or (not ok and self.failed <= KEEP_FAILED):
            self.rows.append(row)

    @property
    def complete(self) -> bool:
        return self.skipped + self.ok + self.failed == self.total and not self.unrecorded


def start_ray(address: str | None, num_cpus: int | None = None) -> bool:
    """Attach to ``address`` (or RAY_ADDRESS, as inside a Ray Job), else start a local Ray (with
    Ray's token authentication asked for explicitly, so that Ray does not warn that it defaulted to
    it; the token is Ray's, kept in ``~/.ray/auth_token``). True when it started a local Ray."""
    import os

    if address or os.environ.get("RAY_ADDRESS"):
        import ray

        if not ray.is_initialized():
            ray.init(address=address, log_to_driver=False)
        return False
    os.environ.setdefault("RAY_AUTH_MODE", "token")
    import ray

    if ray.is_initialized():
        return False
    ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
    return True


def new_run_id() -> str:
    return utc_now().strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6]


def write_plan(config: RunConfig, run_id: str) -> tuple[str, RunSummary]:
    """Step 1: validate the manifest and write the jobs still to do; returns (plan URL, counts)."""
    summary = RunSummary(run_id=run_id)
    summary.warnings = manifest.check_columns(config.manifest, config.storage_options, strict=config.strict)
    done = results.done_index(config.output, config.storage_options)
    plan_url = storage.join(config.output, "runs", f"{run_id}.plan.parquet")
    schema = pa.schema([(name, pa.string()) for name in (
        "image_id", "uri", "options", "mask_uri", "reference_uri", "guide_uri", "degradation",
        "config_hash", "extra")] + [("degradation_seed", pa.int64()), ("attempt", pa.int64())])
    jobs: list[manifest.Job] = []
    sink = pa.BufferOutputStream()

    def flush() -> None:
        ok, attempts = results.lookup(done, [j.image_id for j in jobs], [j.config_hash for j in jobs])
        todo = [{**job.to_row(), "attempt": attempt + 1}
                for job, is_ok, attempt in zip(jobs, ok, attempts, strict=True) if config.force or not is_ok]
        summary.skipped += len(jobs) - len(todo)
        jobs.clear()
        for start in range(0, len(todo), PLAN_ROW_GROUP):
            group = todo[start:start + PLAN_ROW_GROUP]
            if config.pack > 1:  # neighbours share a packed fit: order each group by configuration and size
                group.sort(key=_pack_order)
            writer.write_table(pa.Table.from_pylist(group, schema))

    with pq.ParquetWriter(sink, schema) as writer:
        for job in manifest.plan(config.manifest, config.defaults, storage_options=config.storage_options):
            summary.total += 1
            jobs.append(job)
            if len(jobs) >= LOOKUP_ROWS:
                flush()
        if jobs:
            flush()
    storage.write_bytes(plan_url, sink.getvalue().to_pybytes(), config.storage_options)
    return plan_url, summary


def pool_size(config: RunConfig, todo: int, gpus: float, resources: dict) -> int:
    """Fit actors for the run: as many as the cluster's CPUs (or GPUs) hold, at most ``max_workers``
    and at most the images to do."""
    if config.max_workers:
        fits = config.max_workers
    elif gpus > 0:
        fits = int(resources.get("GPU", 0) // gpus)
    else:
        fits = int(resources.get("CPU", 1) // max(1, config.cpus_per_fit))
    return max(1, min(fits, todo))


def block_rows(todo: int, workers: int, pack: int) -> int:
    """Plan rows per Ray Data block: many rows per block on big runs (a million rows must not be a
    million blocks), at least ``BLOCKS_PER_WORKER`` blocks per actor, whole packs."""
    packs = todo // (pack * workers * BLOCKS_PER_WORKER)
    return pack * max(1, min(packs, MAX_BLOCK_ROWS // pack))


def _pack_order(row: dict) -> tuple:
    """Plan order under packing: the fit options but the (per-image) seed, then the manifest's
    ``height`` and ``width`` columns where it has them (sizes are unknown before images are read)."""
    options = {k: v for k, v in json.loads(row["options"]).items() if k != "seed"}
    extra = json.loads(row["extra"])
    size = []
    for name in ("height", "width"):
        try:
            size.append(int(extra.get(name) or 0))
        except (TypeError, ValueError):
            size.append(0)
    return (json.dumps(options, sort_keys=True), *size)


def run(config: RunConfig, on_result: Callable[[dict], None] | None = None,
        on_plan: Callable[[RunSummary], None] | None = None, connect: Callable[[], None] | None = None) -> RunSummary:
    """Run the batch on the Ray cluster this process is connected to: ``ray.init`` first, or give
    ``connect``, called once the plan is written and only if something is left to fit (a bad
    manifest, or a rerun with nothing to do, never starts Ray)."""
    run_id = config.run_id or new_run_id()
    clock = time.perf_counter()
    plan_url, summary = write_plan(config, run_id)
    if on_plan:
        on_plan(summary)
    todo = summary.total - summary.skipped
    if todo:
        if connect:
            connect()
        import ray

        gpus = config.gpus_per_fit
        if gpus is None:
            gpus = 1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0
        context = ray.data.DataContext.get_current()
        context.execution_no_progress_timeout_s = -1  # a fit may take longer than 30 min
        context.enable_progress_bars = False
        # The plan is one small Parquet file: Ray Data's V2 reader provisions footer-reading actors
        # for every read, a cold start that cost 7 of a 27 s three-image run on 2 CPUs.
        context.use_datasource_v2 = False
        filesystem, path = storage.arrow_filesystem(plan_url, config.storage_options)
        workers = pool_size(config, todo, gpus, ray.cluster_resources())
        dataset = ray.data.read_parquet(path, filesystem=filesystem)
        dataset = dataset.repartition(target_num_rows_per_block=block_rows(todo, workers, config.pack))
        fitted = dataset.map_batches(
            FitActor,
            fn_constructor_kwargs=dict(output=config.output, run_id=run_id, storage_options=config.storage_options,
                                       max_pixels=config.max_pixels, threads=config.cpus_per_fit,
                                       output_format=config.output_format, shard_rows=config.shard_rows,
                                       shard_seconds=config.shard_seconds),
            batch_size=config.pack,
            compute=ray.data.ActorPoolStrategy(min_size=1, max_size=workers),
            num_cpus=config.cpus_per_fit,
            num_gpus=gpus,
        )
        shards: Counter[str] = Counter()  # rows per shard
        for row in fitted.iter_rows():
            row = {k: plain_value(v) for k, v in row.items()}
            shards[row["shard"]] += 1
            summary.add(row)
            if on_result:
                on_result(row)
        summary.unrecorded = sum(shards[url] for url in wait_for_shards(config, set(shards)))
        if config.compact:
            compact(config.output, config.storage_options, full=False)
    summary.seconds = time.perf_counter() - clock
    record = {
        "run_id": run_id, "config": config.public(), "counts": {
            "total": summary.total, "skipped": summary.skipped, "ok": summary.ok, "failed": summary.failed,
            "unrecorded": summary.unrecorded},
        "seconds": round(summary.seconds, 3), "finished_at": utc_now().isoformat(), "versions": _versions(),
    }
    storage.write_json(storage.join(config.output, "runs", f"{run_id}.json"), record, config.storage_options)
    if summary.complete:
        storage.write_bytes(storage.join(config.output, "_SUCCESS"), f"{run_id}\n".encode(), config.storage_options)
    return summary


def wait_for_shards(config: RunConfig, shards: set[str]) -> set[str]:
    """Step 3: wait (up to ``SHARD_WAIT_S``) until every shard the run's rows went to is stored: the
    actors write their last ones as Ray Data ends them. Returns the shards that never came (an actor
    killed before it wrote them; its images have no row, so a rerun fits them again)."""
    prefix = storage.join(config.output, "results")
    deadline = time.monotonic() + SHARD_WAIT_S
    missing = {url.rsplit("/", 1)[-1]: url for url in shards}  # compared by name: a local listing is absolute
    while missing:
        for url, _ in storage.list_dir(prefix, config.storage_options):
            missing.pop(url.rsplit("/", 1)[-1], None)
        if not missing or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    return set(missing.values())


def _versions() -> dict:
    from importlib.metadata import version

    return {name: version(name) for name in ("dip", "torch", "ray", "pyarrow", "fsspec")}

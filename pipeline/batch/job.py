"""The batch job: a manifest in, one DIP fit per image on Ray, images and result rows out.

1. Plan (driver): stream the manifest, validate every row, drop images that already have an
   ``ok`` result for the same configuration (the manifest's keys joined against the done index,
   ``results.done_index``, in chunks), and write the rest to ``runs/<run_id>.plan.parquet``.
2. Fit (Ray Data): ``read_parquet(plan) -> map_batches(FitActor, batch_size=pack)`` on an actor
   pool sized to the cluster, over blocks of up to ``MAX_BLOCK_ROWS`` rows (``pipeline.batch.actor``);
   each actor writes its images as soon as their fit ends and their rows in shards. With ``pack`` > 1,
   same-size images of one batch share one packed fit. A fit whose worker or node is lost is started
   again by Ray on another actor (the claims, ``pipeline.batch.claims``, count the starts, at most
   ``max_fit_attempts``); the driver gives up on a lost head (``pipeline.batch.head``).
3. Record (driver): wait for the actors' last shards (not for those of a node that is gone), fit
   again, in a further pass, the images whose rows a lost node took with it, fold the run's shards
   (``compact``), write ``runs/<run_id>.json``, then ``_SUCCESS`` once every row has a stored result.
"""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.parquet as pq

from .. import storage
from . import claims, head, lease, manifest, results
from .actor import FitActor, plain_value, utc_now
from .compact import compact
from .config import RunConfig

OUTPUT_FOLDERS = ("results", "restored", "masks", "degraded", "runs", "claims", "attempts")  # what a run writes
PLAN_ROW_GROUP = 1000
LOOKUP_ROWS = 20_000  # manifest rows per join against the done index
MAX_BLOCK_ROWS = 64  # plan rows per Ray Data block at most (fits stay one per image)
BLOCKS_PER_WORKER = 4  # at least, where the plan has the rows: the last blocks spread over the pool
SHARD_WAIT_S = 120.0  # how long the driver waits for the shards of rows it has seen
KEEP_OK, KEEP_FAILED = 50, 1000  # rows the driver keeps for the summary table; the results table has all
NODES_EVERY_S = 1.0  # how often the driver asks Ray which nodes are alive while it waits for shards
PLAN_SCHEMA = pa.schema([(name, pa.string()) for name in (
    "image_id", "uri", "options", "mask_uri", "reference_uri", "guide_uri", "degradation", "config_hash",
    "extra")] + [("degradation_seed", pa.int64()), ("attempt", pa.int64()), ("page", pa.int64())])


@dataclass
class RunSummary:
    run_id: str
    total: int = 0  # manifest rows
    skipped: int = 0  # already ok for this configuration
    ok: int = 0
    failed: int = 0
    unrecorded: int = 0  # rows fitted whose shard never arrived, after the last pass: a rerun fits them again
    retried: int = 0  # images whose fit this run started more than once (a worker or node was lost)
    passes: int = 0  # rounds of fits: a further one fits the images whose rows a lost node took with it
    warnings: list[str] = field(default_factory=list)  # about the manifest (look-alike columns)
    catalogue: pa.Schema = field(default_factory=lambda: pa.schema([]))  # the manifest's own columns, carried
    seconds: float = 0.0
    rows: list[dict] = field(default_factory=list)  # a sample for the summary table: failures first

    def add(self, row: dict) -> None:
        """Count one result; keep at most KEEP_FAILED failures and KEEP_OK ok rows (not millions)."""
        ok = row["status"] == "ok"
        self.ok += ok
        self.failed += not ok
        self.retried += (row.get("fit_starts") or 0) > 1
        if (ok and self.ok <= KEEP_OK) or (not ok and self.failed <= KEEP_FAILED):
            self.rows.append(row)

    def retract(self, lost: Counter, shards: set[str]) -> None:
        """Uncount the rows of ``shards``, which never came (``lost``: their counts by status and
        ``retried``): their images are fitted again."""
        self.ok -= lost["ok"]
        self.failed -= lost["error"]
        self.retried -= lost["retried"]
        self.rows = [row for row in self.rows if row.get("shard") not in shards]

    @property
    def complete(self) -> bool:
        return self.skipped + self.ok + self.failed == self.total and not self.unrecorded


def start_ray(address: str | None, num_cpus: int | None = None) -> bool:
    """Attach to ``address`` (or RAY_ADDRESS, as inside a Ray Job), else start a local Ray (with
    Ray's token authentication asked for explicitly, so that Ray does not warn that it defaulted to
    it; the token is Ray's, kept in ``~/.ray/auth_token``). True when this call connected (started a
    local Ray or attached to a cluster): the caller disconnects (``ray.shutdown``) when done."""
    import os

    if address or os.environ.get("RAY_ADDRESS"):
        import ray

        if ray.is_initialized():
            return False
        ray.init(address=address, log_to_driver=False)
        return True
    os.environ.setdefault("RAY_AUTH_MODE", "token")
    import ray

    if ray.is_initialized():
        return False
    private_token()  # an earlier token, made before this rule
    ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
    private_token()  # the one Ray made now, world-readable as Ray writes it
    return True


def private_token() -> None:
    """Make Ray's local token file (``~/.ray/auth_token``) readable by its owner only (0600): Ray writes
    it with the process's umask (0644 by default), and the token is what keeps other users of the
    machine off the local cluster. Nothing when there is none, or it is another user's."""
    import os
    from pathlib import Path

    token = Path.home() / ".ray" / "auth_token"
    try:
        if token.exists() and token.stat().st_uid == os.getuid() and token.stat().st_mode & 0o077:
            token.chmod(0o600)
    except OSError as error:
        import warnings

        warnings.warn(f"could not make Ray's token {token} private (0600): {error}", stacklevel=2)


def new_run_id() -> str:
    return utc_now().strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6]


def write_plan(config: RunConfig, run_id: str) -> tuple[str, RunSummary]:
    """Step 1: validate the manifest and write the jobs still to do; returns (plan URL, counts)."""
    summary = RunSummary(run_id=run_id)
    summary.warnings = manifest.check_columns(config.manifest, config.storage_options, strict=config.strict)
    summary.catalogue = manifest.catalogue_schema(config.manifest, config.storage_options)
    conflicts = results.catalogue_conflicts(config.output, summary.catalogue, config.storage_options)
    if conflicts:
        raise manifest.ManifestError("; ".join(conflicts) + ": cast the column in the manifest to the earlier "
                                     "type, or write to another output")
    done = results.done_index(config.output, config.storage_options)
    plan_url = storage.under(config.output, "runs", f"{run_id}.plan.parquet", storage_options=config.storage_options)
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
            writer.write_table(pa.Table.from_pylist(group, PLAN_SCHEMA))

    with pq.ParquetWriter(sink, PLAN_SCHEMA) as writer:
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
    """Fit actors for the run: as many as the cluster's CPUs (or GPUs) and its custom resources
    (``resources_per_fit``) hold, at most ``max_workers`` and at most the images to do."""
    if config.max_workers:
        fits = config.max_workers
    else:
        fits = int(resources.get("GPU", 0) // gpus) if gpus > 0 else \
            int(resources.get("CPU", 1) // max(1, config.cpus_per_fit))
        for name, amount in config.resources_per_fit.items():
            fits = min(fits, int(resources.get(name, 0) // amount))
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
        on_plan: Callable[[RunSummary], None] | None = None, connect: Callable[[], None] | None = None,
        on_lost: Callable[[int], None] | None = None) -> RunSummary:
    """Run the batch on the Ray cluster this process is connected to: ``ray.init`` first, or give
    ``connect``, called once the plan is written and only if something is left to fit (a bad
    manifest, or a rerun with nothing to do, never starts Ray). ``on_lost(n)``: n rows seen went
    with a lost node and are fitted again. Raises ``head.HeadLost`` when the Ray head is lost, and
    ``lease.LeaseHeld`` when another command holds the output (one run per output at a time)."""
    run_id = config.run_id or new_run_id()
    if not lease.holds(config.output, config.storage_options):  # (``dip run`` checked and took it already)
        check_output(config)
    with lease.held(config.output, config.storage_options, holder=run_id, command=config.command,
                    break_stale=config.break_lease):
        return _run(config, run_id, on_result, on_plan, connect, on_lost)


def check_output(config: RunConfig) -> None:
    """Before anything runs: every folder the run writes (``OUTPUT_FOLDERS``) takes an object and
    gives it back; ValueError naming the first that does not."""
    storage.check_writable(config.output, config.storage_options, folder=True)
    for name in OUTPUT_FOLDERS:
        storage.probe(storage.under(config.output, name, storage_options=config.storage_options),
                      config.storage_options)


def _run(config: RunConfig, run_id: str, on_result, on_plan, connect, on_lost) -> RunSummary:
    clock = time.perf_counter()
    plan_url, summary = write_plan(config, run_id)
    if on_plan:
        on_plan(summary)
    todo = summary.total - summary.skipped
    if todo:
        if connect:
            connect()
        import ray

        with head.watch(ray.get_runtime_context().gcs_address):
            for number in range(1, config.max_fit_attempts + 1):  # a further pass only for rows lost with a node
                summary.passes = number
                summary.unrecorded = fit_pass(config, run_id, plan_url, todo, summary, on_result)
                if not summary.unrecorded or number == config.max_fit_attempts:
                    break
                if on_lost:
                    on_lost(summary.unrecorded)
                plan_url, todo = replan(config, run_id, plan_url, number + 1)
                if not todo:  # their shards came after all (counted by the next run's plan)
                    summary.unrecorded = 0
                    break
        claims.remove(config.output, run_id, config.storage_options)
        if config.compact:
            compact(config.output, config.storage_options, full=False)
    summary.seconds = time.perf_counter() - clock
    record = {
        "run_id": run_id, "config": config.public(), "counts": {
            "total": summary.total, "skipped": summary.skipped, "ok": summary.ok, "failed": summary.failed,
            "unrecorded": summary.unrecorded, "retried": summary.retried, "passes": summary.passes},
        "seconds": round(summary.seconds, 3), "finished_at": utc_now().isoformat(), "versions": _versions(),
        "catalogue": {f.name: str(f.type) for f in summary.catalogue},  # the carried columns' types
    }
    storage.write_json(storage.under(config.output, "runs", f"{run_id}.json", storage_options=config.storage_options),
                       record, config.storage_options)
    if summary.complete:
        storage.write_bytes(storage.under(config.output, "_SUCCESS", storage_options=config.storage_options),
                            f"{run_id}\n".encode(), config.storage_options)
    return summary


def fit_pass(config: RunConfig, run_id: str, plan_url: str, todo: int, summary: RunSummary,
             on_result: Callable[[dict], None] | None) -> int:
    """Step 2, one pass: the plan's rows fitted on an actor pool, each result counted in ``summary``.
    Returns how many of those rows went to shards that never came (a node lost with them); they are
    uncounted, for the next pass to fit again."""
    import ray

    gpus = fit_gpus(config)
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
                                   shard_seconds=config.shard_seconds, max_fit_attempts=config.max_fit_attempts,
                                   catalogue=summary.catalogue),
        batch_size=config.pack,
        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=workers),
        num_cpus=config.cpus_per_fit,
        num_gpus=gpus,
        resources=config.resources_per_fit or None,
    )
    shards: dict[str, Counter] = {}  # per shard: its rows by status, and how many were retried
    nodes: dict[str, str | None] = {}  # per shard: the node of the actor that writes it
    for row in fitted.iter_rows():
        row = {k: plain_value(v) for k, v in row.items()}
        tally = shards.setdefault(row["shard"], Counter())
        tally[row["status"]] += 1
        tally["retried"] += (row.get("fit_starts") or 0) > 1
        nodes[row["shard"]] = row.get("ray_node")
        summary.add(row)
        if on_result:
            on_result(row)
    missing = wait_for_shards(config, nodes, alive_nodes)
    lost = sum((shards[url] for url in missing), Counter())
    summary.retract(lost, missing)
    return lost["ok"] + lost["error"]


def fit_gpus(config: RunConfig) -> float:
    """The GPUs of one fit: ``gpus_per_fit``, else 1 on a cluster with GPUs and 0 without."""
    import ray

    if config.gpus_per_fit is not None:
        return config.gpus_per_fit
    return 1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0


def replan(config: RunConfig, run_id: str, plan_url: str, number: int) -> tuple[str, int]:
    """The rows of a pass's plan that still have no result row of their planned attempt (a lost node
    took it), as the plan of pass ``number``, ``runs/<run_id>.plan-<number>.parquet``: (URL, rows)."""
    done = results.done_index(config.output, config.storage_options)
    planned = pq.ParquetFile(pa.BufferReader(storage.read_bytes(plan_url, config.storage_options)))
    url = storage.under(config.output, "runs", f"{run_id}.plan-{number}.parquet",
                        storage_options=config.storage_options)
    sink, rows = pa.BufferOutputStream(), 0
    with pq.ParquetWriter(sink, PLAN_SCHEMA) as writer:
        for batch in planned.iter_batches(LOOKUP_ROWS):
            table = pa.Table.from_batches([batch]).cast(PLAN_SCHEMA)
            _, attempts = results.lookup(done, table["image_id"].to_pylist(), table["config_hash"].to_pylist())
            again = table.filter(pa.array([a < b for a, b in zip(attempts, table["attempt"].to_pylist(),
                                                                 strict=True)]))
            rows += len(again)
            writer.write_table(again)
    storage.write_bytes(url, sink.getvalue().to_pybytes(), config.storage_options)
    return url, rows


def alive_nodes() -> set[str]:
    """The ids of the Ray nodes alive now."""
    import ray

    return {node["NodeID"] for node in ray.nodes() if node.get("Alive")}


def wait_for_shards(config: RunConfig, shards: dict[str, str | None],
                    alive: Callable[[], set[str]] | None = None) -> set[str]:
    """Step 3: wait (up to ``SHARD_WAIT_S``) until every shard the run's rows went to (``shards``: URL
    -> the node of its writer, None where unknown) is stored: the actors write their last ones as Ray
    Data ends them. A shard still missing once its node is gone (``alive``: the live nodes' ids) never
    comes, and is not waited for. Returns the shards that never came (their writer killed before it
    wrote them; their images have no row: fitted again)."""
    prefix = storage.under(config.output, "results", storage_options=config.storage_options)
    deadline = time.monotonic() + SHARD_WAIT_S
    missing = {url.rsplit("/", 1)[-1]: url for url in shards}  # compared by name: a local listing is absolute
    living, asked = set(), float("-inf")
    while missing:
        if alive and time.monotonic() - asked >= NODES_EVERY_S:
            living, asked = alive(), time.monotonic()
        gone = {node for node in shards.values() if node is not None and node not in living} if alive else set()
        for url, _ in storage.list_dir(prefix, config.storage_options):  # listed after the nodes were asked
            missing.pop(url.rsplit("/", 1)[-1], None)
        if all(shards[url] in gone for url in missing.values()) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    return set(missing.values())


def _versions() -> dict:
    from importlib.metadata import version

    return {name: version(name) for name in ("dip", "torch", "ray", "pyarrow", "fsspec")}

"""Run a sweep on a Dask cluster: the only module that imports dask.distributed.

The client creates (or checks) the store, plans the pending blocks and submits
them in a bounded window with ``as_completed``. Each task measures its block,
writes it into its own region of the store and returns a small summary; blocks
lost with a worker are rescheduled by the scheduler, and a block that raises is
reported with its coordinates while the others go on. SIGINT and SIGTERM cancel
the run's blocks on the scheduler and end the run with one line saying how to
resume (:func:`interruptible`); a batch system that refuses the first job stops
the run at once instead of leaving it waiting for workers.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import CancelledError

import dask
from distributed import Client, LocalCluster, Security, as_completed
from distributed.core import Status
from distributed.scheduler import KilledWorker
from tqdm.auto import tqdm

from .clusterconfig import ClusterConfig, is_loopback
from .errors import BlockFailed, ClusterLost, Interrupted, ResultNotFinite, UserError
from .location import StoreLocation, as_location
from .lock import store_lock
from .measure import measure_block
from .plan import BlockKey, all_blocks, n_cells, pending_blocks
from .spec import Spec
from .store import check_store, create_or_resume, done_mask, growth, write_block

logger = logging.getLogger(__name__)

# One single-threaded worker per core: BLAS must not spawn threads of its own.
BLAS_ENV = {k: "1" for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                             "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")}


@dataclasses.dataclass
class RunSummary:
    """What a run did; ``failed`` holds (block, message) pairs."""

    store: str
    total: int
    skipped: int
    done: int = 0
    failed: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    cells: int = 0
    seconds: float = 0.0
    task_seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.failed

    def __str__(self) -> str:
        rate = self.cells / self.seconds if self.seconds > 0 else 0.0
        lines = [f"{self.done} blocks computed, {self.skipped} already done, {len(self.failed)} failed, "
                 f"of {self.total}; {self.seconds:.1f} s wall, {rate:,.0f} cells/s; store: {self.store}"]
        lines += [f"  failed: {key}: {msg}" for key, msg in self.failed]
        if any(not msg.startswith(ResultNotFinite.__name__) for _, msg in self.failed):  # those would repeat
            lines.append("Rerun the same command to retry only the missing blocks.")
        return "\n".join(lines)


def quiet_dask_logs() -> None:
    """Silence Dask's own log messages (reconnects, worker events, a refused job's traceback).

    The run's summary reports what failed; ``nnsweep run --verbose`` keeps them.
    """
    names = [n for n in logging.root.manager.loggerDict if n.startswith("distributed")]
    for name in ["distributed", *names, "tornado.application"]:
        logging.getLogger(name).setLevel(logging.CRITICAL)


def run_block(spec: Spec, path: str | StoreLocation, key: BlockKey) -> dict:
    """Measure one block and write it to the store (runs on a worker)."""
    t0 = time.perf_counter()
    try:
        result = measure_block(spec, key.L, key.m, key.seeds)
        write_block(path, key, result, time.perf_counter() - t0)
    except MemoryError as e:
        raise BlockFailed(f"block {key}: out of memory ({e}); use fewer seeds per block "
                          "(--seeds-per-block) or workers with more memory") from e
    except Exception as e:
        raise BlockFailed(f"block {key}: {type(e).__name__}: {e}") from e
    return {"key": str(key), "seconds": time.perf_counter() - t0, "host": socket.gethostname(),
            "cells": n_cells(spec, key)}


@contextlib.contextmanager
def local_cluster(workers: int | None = None, memory_limit: str | None = "auto", **options) -> Iterator[Client]:
    """An embedded cluster on 127.0.0.1: one single-threaded worker process per core.

    The scheduler, the workers and the dashboard bind to the loopback interface only.
    """
    kwargs = dict(n_workers=workers or os.cpu_count() or 1, threads_per_worker=1, processes=True,
                  host="127.0.0.1", dashboard_address="127.0.0.1:0", memory_limit=memory_limit,
                  env=BLAS_ENV, silence_logs=logging.CRITICAL)
    kwargs.update(options)
    # The nanny's default MALLOC_TRIM_THRESHOLD_ turns every large numpy temporary
    # into a fresh mmap; the kernel allocates many, and ran 10-30% slower with it
    # (benchmarks/bench_pipeline.py). The nanny also copies it into our own environ.
    environ = {k: v for k, v in dask.config.get("distributed.nanny.pre-spawn-environ").items()
               if k != "MALLOC_TRIM_THRESHOLD_"}
    os.environ.pop("MALLOC_TRIM_THRESHOLD_", None)
    with dask.config.set({"distributed.nanny.pre-spawn-environ": environ}), _sigint_ignored():
        cluster = LocalCluster(**kwargs)
    with cluster, Client(cluster) as client:
        yield client


@contextlib.contextmanager
def _sigint_ignored() -> Iterator[None]:
    """Ignore SIGINT while the embedded cluster starts: its worker processes inherit that.

    Ctrl-C reaches the terminal's whole process group; only this process should
    act on it (cancel, close the cluster, print one line), not every worker with
    a KeyboardInterrupt traceback. An ignored disposition is the only one that
    survives the exec of a spawned process (a blocked mask does not); the price
    is that a Ctrl-C during the second or two of start-up is lost.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)


def security(tls: dict | None) -> Security | None:
    """distributed's Security from a cluster file's ``tls`` section (certificate paths)."""
    if not tls:
        return None
    return Security(tls_ca_file=tls.get("ca_file"), tls_client_cert=tls.get("cert"),
                    tls_client_key=tls.get("key"), tls_scheduler_cert=tls.get("cert"),
                    tls_scheduler_key=tls.get("key"), tls_worker_cert=tls.get("cert"),
                    tls_worker_key=tls.get("key"), require_encryption=tls.get("require_encryption", True))


@contextlib.contextmanager
def connect(scheduler: str, timeout: float = 10.0, tls: dict | None = None, **client_kwargs) -> Iterator[Client]:
    """A client of an existing scheduler; fails within ``timeout`` seconds if it is unreachable."""
    if not scheduler.startswith("tls://") and not is_loopback(scheduler):
        print(f"warning: connecting to {scheduler} without TLS: the traffic is unencrypted and anyone "
              "who can reach the scheduler can run code on its workers. Use a tls:// address with "
              "certificates (see cluster/README.md).", file=sys.stderr)
    try:
        client = Client(scheduler, timeout=timeout, security=security(tls), **client_kwargs)
    except (OSError, TimeoutError, ValueError) as e:
        raise UserError(f"could not reach the scheduler at {scheduler!r} within {timeout:.0f} s "
                        f"({type(e).__name__}: {e}); check the address (tcp://HOST:PORT) and that "
                        "the scheduler is running.") from None
    with client:
        yield client


def make_cluster(cfg: ClusterConfig, bind_loopback: bool = False):
    """The cluster object a config describes (not yet scaled).

    ``bind_loopback`` puts a jobqueue scheduler on 127.0.0.1 (for `cluster show`).
    """
    opts = dict(cfg.options)
    if cfg.backend in ("slurm", "pbs"):
        import dask_jobqueue

        cls = {"slurm": dask_jobqueue.SLURMCluster, "pbs": dask_jobqueue.PBSCluster}[cfg.backend]
        if bind_loopback:
            opts["scheduler_options"] = {**opts.get("scheduler_options", {}), "host": "127.0.0.1",
                                         "dashboard_address": "127.0.0.1:0"}
        return cls(security=security(cfg.tls), **opts)
    if cfg.backend == "kubernetes":
        try:
            from dask_kubernetes.operator import KubeCluster
        except ImportError:
            raise UserError("the kubernetes backend needs dask-kubernetes: pip install 'nnsweep[kubernetes]'.") \
                from None
        return KubeCluster(**opts)
    raise UserError(f"backend {cfg.backend!r} has no cluster object; use local_cluster().")


def job_script(cfg: ClusterConfig) -> str:
    """The batch script dask-jobqueue would submit for a slurm or pbs config."""
    if cfg.backend not in ("slurm", "pbs"):
        raise UserError(f"{cfg.source or 'cluster file'}: backend {cfg.backend!r} submits no job script; "
                        "`nnsweep cluster show` works for slurm and pbs.")
    with make_cluster(cfg, bind_loopback=True) as cluster:
        return cluster.job_script()


@contextlib.contextmanager
def _refused_job_is_user_error(cfg: ClusterConfig) -> Iterator[None]:
    """Report a job the batch system refuses (sbatch / qsub exit status) as a UserError."""
    try:
        yield
    except RuntimeError as e:
        if "Command exited with non-zero exit code" not in str(e):
            raise
        # dask-jobqueue's message: the exit code, the command, its stdout and its stderr
        detail = " ".join(str(e).rpartition("stderr:")[2].split()) or " ".join(str(e).split())
        raise UserError(f"{cfg.source or 'cluster file'}: the batch system refused the first job ({detail}). "
                        "Check queue, account, walltime, memory and cores in the file against the cluster's "
                        "limits (`nnsweep cluster show` prints the script). Nothing was written.") from None


def _submit_first_job(cluster) -> None:
    """Submit a job now and wait for the submission (not for the job to start).

    dask-jobqueue submits from a background task and only logs a failed sbatch /
    qsub, which would leave the run waiting forever for workers.
    """
    async def submit() -> None:
        # in the cluster's event loop, so that this waits for the submission that
        # scale() schedules, not for a later one that finds nothing left to do
        if not cluster.worker_spec:
            cluster.scale(jobs=1)
        try:
            await cluster._correct_state()
        except RuntimeError:
            # a job that was never submitted has nothing to cancel: mark it failed, forget it
            for name in [n for n, job in cluster.workers.items() if job.job_id is None]:
                cluster.workers.pop(name).status = Status.failed
                cluster.worker_spec.pop(name, None)
            raise

    cluster.sync(submit)


@contextlib.contextmanager
def start_cluster(cfg: ClusterConfig) -> Iterator[Client]:
    """Start the cluster a config describes and yield a client of it."""
    if cfg.backend == "local":
        opts = dict(cfg.options)
        with local_cluster(opts.pop("n_workers", None), opts.pop("memory_limit", "auto"), **opts) as client:
            yield client
        return
    jobqueue = cfg.backend in ("slurm", "pbs")
    with _refused_job_is_user_error(cfg):
        cluster = make_cluster(cfg)
    with cluster:
        if jobqueue:
            with _refused_job_is_user_error(cfg):
                _submit_first_job(cluster)
        if cfg.adapt:
            cluster.adapt(**cfg.adapt)
        elif not cfg.options.get("n_workers"):
            cluster.scale(jobs=1) if cfg.backend != "kubernetes" else cluster.scale(1)
        with Client(cluster, security=security(cfg.tls)) as client:
            yield client


class _Window:
    """The blocks in flight: submits in a bounded window and yields futures as they finish.

    The window follows the cluster's size as workers join (jobqueue, adapt,
    remote), so that a grid of 10^5 blocks never becomes one giant graph.
    """

    def __init__(self, client: Client, spec: Spec, path: StoreLocation, todo: list[BlockKey],
                 window: int | None):
        self.client, self.spec, self.path, self.window = client, spec, path, window
        self.pending = iter(todo)
        self.futures: dict[str, tuple[BlockKey, object]] = {}
        # the store is part of a task's key: the same spec run into two stores on one
        # scheduler must not be merged into one task
        self.prefix = f"block-{spec.hash[:8]}-{hashlib.sha1(str(path).encode()).hexdigest()[:8]}"
        self.done = as_completed()
        self._size, self._sized = 0, -float("inf")

    def limit(self) -> int:
        """The most blocks in flight: ``window``, or 2 per worker thread (at least 64).

        The cluster's size is asked of the scheduler at most once a second, not
        once a block: each asking is a round trip that the client would
        otherwise pay for every block it collects.
        """
        if self.window:
            return self.window
        if time.monotonic() - self._sized > 1.0:
            self._size, self._sized = max(64, 2 * sum(self.client.nthreads().values())), time.monotonic()
        return self._size

    def top_up(self) -> None:
        limit = self.limit()
        while len(self.futures) < limit:
            key = next(self.pending, None)
            if key is None:
                return
            fut = self.client.submit(run_block, self.spec, self.path, key, key=f"{self.prefix}-{key}", pure=False)
            self.futures[fut.key] = (key, fut)
            self.done.add(fut)

    def __iter__(self) -> Iterator[tuple[BlockKey, object]]:
        self.top_up()
        for fut in self.done:
            key, _ = self.futures.pop(fut.key)
            yield key, fut
            fut.release()
            self.top_up()

    def cancel(self) -> int:
        """Cancel every block in flight on the scheduler; returns how many there were."""
        futures = [fut for _, fut in self.futures.values()]
        if not futures or self.client.status != "running":  # a lost scheduler holds nothing to cancel
            return 0
        self.client.cancel(futures, force=True)
        logger.info("cancelled %d blocks in flight", len(futures))
        return len(futures)


def _lost(client: Client, summary: RunSummary, error: BaseException) -> ClusterLost:
    return ClusterLost(
        f"lost the scheduler {client.scheduler.address} mid-run ({type(error).__name__}: {error}); "
        f"{summary.done} blocks finished in this run and are kept in {summary.store}. Rerun the same command "
        "against a running scheduler to compute only the missing blocks.")


def _failure(key: BlockKey, error: BaseException, client: Client, summary: RunSummary) -> str:
    """What to report for a block whose task raised; a lost scheduler stops the run instead."""
    if isinstance(error, CancelledError):
        if client.status != "running":
            raise _lost(client, summary, error) from None
        return f"cancelled ({error})"
    if isinstance(error, KilledWorker):
        return (f"its worker died repeatedly ({error}); if it ran out of memory, use fewer seeds per block "
                "(--seeds-per-block)")
    if isinstance(error, BlockFailed):
        return str(error).removeprefix(f"block {key}: ")
    return f"{type(error).__name__}: {error}"


def _record(summary: RunSummary, key: BlockKey, fut, client: Client) -> None:
    """Add one finished (or failed) block to the summary."""
    try:
        info = fut.result()
    except Exception as e:
        logger.debug("block %s failed", key, exc_info=True)
        summary.failed.append((str(key), _failure(key, e, client, summary)))
        return
    summary.done += 1
    summary.cells += info["cells"]
    summary.task_seconds += info["seconds"]


def _interrupted(e: Interrupted, summary: RunSummary, cancelled: int) -> Interrupted:
    """The one line an interrupted run ends with: what is kept and how to resume."""
    done = summary.skipped + summary.done
    return Interrupted(e.signum, f"interrupted ({e.signal_name}): {done} of {summary.total} blocks are done in "
                       f"{summary.store} ({summary.done} in this run); cancelled {cancelled} submitted. Run the "
                       f"same command again to compute only the {summary.total - done} still to do.")


def run_sweep(spec: Spec, path: str | StoreLocation, client: Client, progress: bool = True,
              window: int | None = None) -> RunSummary:
    """Compute every block of ``spec`` not yet done in the store at ``path``.

    Args:
        spec: the validated sweep.
        path: the store; created from the spec if missing, else checked against it.
        client: a client of the cluster to run on.
        progress: show a progress bar on stderr.
        window: most blocks in flight at once (default: 2 per worker thread, at least 64).

    Returns:
        The run's summary; ``summary.ok`` is False if any block failed.

    Raises:
        Interrupted: SIGINT or SIGTERM (see :func:`interruptible`); the blocks in
            flight are cancelled on the scheduler first.
    """
    t0 = time.perf_counter()
    path = as_location(path)
    grown = growth(spec, path) if check_store(spec, path)[1] else {}
    spec, existed = create_or_resume(spec, path)
    todo = pending_blocks(spec, done_mask(path))
    total = len(all_blocks(spec))
    summary = RunSummary(store=str(path), total=total, skipped=total - len(todo))
    if grown:
        print(f"grew {path} in place: " + ", ".join(f"{field} {len(a)} -> {len(b)} values"
                                                   for field, (a, b) in grown.items()), file=sys.stderr)
    if existed:
        print(f"resuming {path}: {summary.skipped} of {summary.total} blocks already done, "
              f"{len(todo)} to compute", file=sys.stderr)
    flight = _Window(client, spec, path, todo, window)
    try:
        with tqdm(total=len(todo), unit="block", desc="sweep", disable=not progress, file=sys.stderr) as bar:
            for key, fut in flight:
                _record(summary, key, fut, client)
                bar.update()
    except Interrupted as e:
        raise _interrupted(e, summary, flight.cancel()) from None
    except OSError as e:  # submitting: the scheduler went away between two blocks
        raise _lost(client, summary, e) from None
    summary.seconds = time.perf_counter() - t0
    return summary


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """While inside, SIGINT and SIGTERM raise :class:`Interrupted` in the main thread.

    The run can then cancel its blocks on the scheduler and close its cluster;
    a second signal during that clean-up exits at once. Outside the main
    thread (where Python delivers no signals) this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def again(signum, frame):
        os._exit(128 + signum)

    def first(signum, frame):
        for sig in old:
            signal.signal(sig, again)
        raise Interrupted(signum)

    old = {sig: signal.signal(sig, first) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


def run(spec: Spec, store: str | None = None, scheduler: str | None = None, workers: int | None = None,
        seeds_per_block: int | None = None, progress: bool = True, cluster: ClusterConfig | None = None,
        storage_options: dict | None = None) -> RunSummary:
    """Run (or resume) a sweep: the public entry point behind ``nnsweep run``.

    Args:
        spec: the validated sweep.
        store: the results store, a path or an fsspec URL; default ``results/<spec name>.zarr``.
        scheduler: address of a running scheduler; default an embedded local cluster.
        workers: size of the local cluster (default: one worker per core).
        seeds_per_block: layout of a new store; must match an existing one.
        progress: show a progress bar on stderr.
        cluster: a cluster config to start (slurm, pbs, kubernetes, local) instead.
        storage_options: fsspec options for a store URL (default: the spec's).

    Raises:
        UserError: the store cannot be used for this spec, or the scheduler is unreachable.
    """
    if scheduler and cluster and cluster.backend != "scheduler":
        raise UserError(f"--scheduler and --cluster {cluster.source} (backend {cluster.backend}) both say "
                        "where to run; give one of them (a scheduler-backend file may be combined with "
                        "--scheduler, which overrides its address).")
    options = storage_options if storage_options is not None else dict(spec.execution.storage_options)
    loc = as_location(store or default_store_path(spec), options)
    if seeds_per_block is not None:
        spec = spec.with_execution(seeds_per_block=seeds_per_block)
    resumed_spec, existed = check_store(spec, loc)  # writes nothing before the cluster is up
    if existed and seeds_per_block is not None and \
            resumed_spec.execution.seeds_per_block != spec.execution.seeds_per_block:
        raise UserError(f"store {loc.url!r} holds {resumed_spec.execution.seeds_per_block} seeds per block; "
                        f"--seeds-per-block {seeds_per_block} cannot change an existing store's layout. "
                        "Omit the option to resume, or pass a new --store. Nothing was written.")
    if scheduler or cluster and cluster.backend == "scheduler":
        opts = dict(cluster.options) if cluster else {}
        address = scheduler or opts.pop("address")
        opts.pop("address", None)
        cm = connect(address, timeout=float(opts.pop("timeout", 10)), tls=cluster.tls if cluster else None, **opts)
    elif cluster:
        if workers is not None and cluster.backend == "local":
            cluster = dataclasses.replace(cluster, options={**cluster.options, "n_workers": workers})
        cm = start_cluster(cluster)
    else:
        cm = local_cluster(workers)
    with interruptible():
        try:
            with store_lock(loc), cm as client:  # one writer per store, taken before the cluster starts
                print(f"dashboard: {client.dashboard_link}", file=sys.stderr)
                return run_sweep(resumed_spec, loc, client, progress=progress)
        except Interrupted as e:
            if e.detailed:
                raise
            raise Interrupted(e.signum, f"interrupted ({e.signal_name}) before the sweep started; run the same "
                              "command again to start it.") from None


def default_store_path(spec: Spec) -> str:
    """``results/<name>.zarr`` under the working directory."""
    return os.path.join("results", f"{spec.name or 'sweep'}.zarr")

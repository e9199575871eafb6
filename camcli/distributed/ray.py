"""The Ray engine: the same run as :mod:`camcli.runner`, scheduled by Ray Data on a cluster.

The driver (the ``camcli`` process) lists the inputs — the same discovery, ``--shard`` and
order as a local run — in windows (:func:`window_size`): each window goes into Ray's object
store as blocks of one batch of paths, and becomes a dataset handed to ``Dataset.map_batches``
with :class:`Worker`, a callable class that Ray Data runs as a pool of actors; then the next
window is listed. So the driver holds one window, however many inputs there are. Each
worker loads the model once per window, sizes TensorFlow's thread pools to the CPUs Ray gave
it, and calls the batch core every local run calls
(:func:`camcli.runner.decoder`, :meth:`camcli.pipeline.Pipeline.run_batch`): it reads its
inputs, writes each input's outputs itself, atomically, and returns one small row per input
(:data:`ROW_FIELDS`). The driver turns rows back into :class:`~camcli.pipeline.ImageResult`
objects, so progress, ``--json`` lines, the summary, the report and exit codes are the local
run's code. It never sees an image or a map.

Faults:

- A worker that dies (SIGKILL, OOM) is restarted by Ray and its batch run again; outputs are
  atomic and the same settings give the same bytes, so a batch done twice leaves one set of
  outputs, and Ray Data passes on each row once. A batch whose worker died :data:`RETRIES` + 1
  times is given up: its inputs are reported as failed (``lost``), each by name — the driver
  keeps a bit per input of what came back.
- A bad input fails inside the worker as it does locally (one row, ``ok`` false).
- A full disk: rows carry the ``errno`` of a write that failed, so the local policy
  (:func:`camcli.runner.stop_when_full`) stops the run after the same streak, with the same
  message; closed early, the driver stops the workers and waits for the batches in progress
  (their writes end, as a local run's) before it disconnects.
- A worker that cannot load the model returns a ``fatal`` row; the driver stops the run with
  that message and its exit status, as a local run stops before it starts.
- ``stop`` (SIGINT/SIGTERM on the CLI): workers start no new batch (a :class:`_Control` actor
  says so), the driver waits for the batches in progress, shows their rows and ends.

Only this module imports Ray, and only when called; ``camcli[ray]`` installs it.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import socket
import threading
import time
import traceback
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from camcli import storage
from camcli.errors import (
    CamcliError,
    ClusterError,
    ExitStatus,
    InputError,
    UsageError,
    printable,
)
from camcli.limits import DEFAULT_MAX_PIXELS
from camcli.pipeline import EAGER_MAX_IMAGES, ImageResult, OutputOptions, RunStats
from camcli.sharding import Shard

#: A batch whose worker died is run again at most this many times, then its inputs are lost.
RETRIES = 3
#: Paths per block of the listing in the object store, in batches. One: Ray Data hands a
#: worker one block per call and sends its rows back when the call ends, so rows stream back
#: batch by batch (steady progress), and a worker killed mid-call redoes one batch.
BLOCK_BATCHES = 1
#: The listing goes to the cluster in windows, each a dataset of its own: the driver holds
#: one window (its paths, then a reference per block), so its memory does not grow with the
#: inputs, and a huge prefix starts after one window is listed. Each window costs every
#: worker one model load, so a window is this many batches per worker (and at least
#: MIN_WINDOW_BATCHES): at 16 images a batch and ~5 s a load, under 2 % of a CPU worker's time.
WINDOW_BATCHES_PER_WORKER = 256
MIN_WINDOW_BATCHES = 1024
#: After ``stop``, how long the driver waits for the batches in progress to finish (seconds).
STOP_GRACE = 120.0
#: Default CPUs per worker, capped at the largest node's: TensorFlow's CPU kernels scale well
#: up to about this many threads on one batch; beyond it, more workers do better.
DEFAULT_CPUS = 4

#: One row per input, from the workers to the driver (and of :func:`explain_dataset`).
ROW_FIELDS = (
    "input", "ok", "skipped", "error", "files", "record",
    "top1_index", "top1_label", "top1_probability", "worker",
)


@dataclass(frozen=True)
class RayOptions:
    """Where and how wide a Ray run goes (``--ray-*``)."""

    address: str | None = None  # a cluster ("host:port", "ray://…", "auto"); None: RAY_ADDRESS
    workers: int | None = None  # actors; None: as many as the cluster's CPUs (GPUs) allow
    cpus: float | None = None  # per worker; None: DEFAULT_CPUS, at most the largest node's
    gpus: float = 0.0  # per worker

    def __post_init__(self):
        if self.workers is not None and self.workers < 1:
            raise UsageError(f"--ray-workers must be at least 1, not {self.workers}")
        if self.cpus is not None and self.cpus <= 0:
            raise UsageError(f"--ray-cpus must be more than 0, not {self.cpus}")
        if self.gpus < 0:
            raise UsageError(f"--ray-gpus must be 0 or more, not {self.gpus}")


@dataclass(frozen=True)
class WorkerSpec:
    """What a worker needs to rebuild the run's pipeline: the options, never a model."""

    model_options: dict  # keyword arguments of Explainer
    output: OutputOptions = field(default_factory=OutputOptions)
    max_pixels: int | None = DEFAULT_MAX_PIXELS  # None: no limit, as in a local run
    skip_existing: bool = False
    compiled: bool = True
    cwd: str | None = None  # the driver's folder: relative paths mean the same on a worker
    debug: bool = False
    control: object = None  # a _Control actor handle (the CLI's runs), or None
    # the driver's credentials for URLs (storage.backend_environment): a cluster's nodes were
    # started without them. Not through Ray's runtime_env: Ray writes that, values and all,
    # in its agents' logs on every node. Travels as --storage-option values do; never shown.
    environment: dict = field(default_factory=dict, repr=False)
    max_bytes: int | None = None  # read at most this much per input (None: from max_pixels)


# --------------------------------------------------------------------------- the worker


class Worker:
    """One Ray actor: loads the model once, explains batches of paths (and bytes)."""

    def __init__(self, spec: WorkerSpec):
        import ray

        self.spec, self.fatal, self.warning = spec, None, None
        os.environ.update(spec.environment)  # before any backend reads it
        self.name = f"{socket.gethostname()}:{os.getpid()}"
        self.actor = ray.get_runtime_context().get_actor_id()
        self.node = ray.get_runtime_context().get_node_id()
        if spec.control is not None:  # a restart: the batch the dead process had is not busy
            spec.control.started.remote(self.actor)
        try:
            self._load(spec)
        except Exception as exc:  # reported with the first batch: see __call__
            self.fatal = (str(exc) if isinstance(exc, CamcliError) else _one_line(exc),
                          int(getattr(exc, "exit_status", ExitStatus.SOME_FAILED)))

    def _load(self, spec: WorkerSpec) -> None:
        import ray

        from camcli.api import Explainer
        from camcli.runner import Inputs, decoder
        from camcli.tfimport import import_quietly

        if spec.cwd and os.path.isdir(spec.cwd):
            os.chdir(spec.cwd)
        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU") or 1
        threads = max(1, int(cpus))
        import_quietly(threads)  # Ray sets OMP_NUM_THREADS, not TensorFlow's pools
        self.explainer = Explainer(**spec.model_options)
        self.warning = self.explainer.slow_precision  # the driver shows it, as a local run
        self.pipeline = self.explainer.pipeline(spec.output, RunStats())
        inputs = Inputs((), max_pixels=spec.max_pixels, skip_existing=spec.skip_existing,
                        storage_options=spec.output.storage_options, max_bytes=spec.max_bytes)
        self.decode = decoder(self.pipeline, inputs)
        remote = storage.is_url(spec.output.out_dir)
        self.pool = ThreadPoolExecutor(max(threads, storage.IO_WORKERS if remote else 1))

    def __call__(self, batch):
        import pyarrow as pa

        columns = batch.to_pydict() if hasattr(batch, "to_pydict") else dict(batch)
        paths = [str(p) for p in columns["path"]]
        passed = {k: columns[k] for k in ("block", "index") if k in columns}
        if self.spec.debug:  # who does what, among Ray's lines on the driver
            print(f"camcli: worker {self.name} on node {self.node}: a batch of {len(paths)}",
                  flush=True)
        if self.fatal is not None:
            if self.spec.control is None:  # a Python caller: an exception is the clearest
                raise UsageError(self.fatal[0])
            rows = [_row(ImageResult(Path(p), ok=False), fatal=self.fatal) for p in paths]
        elif self.spec.control is not None and not _call(self.spec.control.begin, self.actor):
            rows = [_row(ImageResult(Path(p), ok=False), cancelled=True) for p in paths]
        else:
            try:
                results = self._explain(paths, columns.get("bytes"))
            finally:
                if self.spec.control is not None:  # waited for: counted before its rows
                    _call(self.spec.control.end, self.actor, len(paths))
            rows = [_row(result, self.name, self.spec.debug, warning=self.warning)
                    for result in results]
        return pa.Table.from_pylist([{**row, **{k: v[i] for k, v in passed.items()}}
                                     for i, row in enumerate(rows)])

    def _explain(self, paths: list[str], data: list | None) -> list[ImageResult]:
        """The local run's stages for one batch: decode (or skip), the batch core, write."""
        from camcli.runner import SKIPPED

        options = self.spec.output.storage_options
        locations = [storage.location(p, options) for p in paths]
        data = data if data is not None else [None] * len(paths)
        decoded = list(self.pool.map(self.decode, locations, data))
        results: list[ImageResult | None] = [None] * len(paths)
        items, where = [], []
        for i, (location, item) in enumerate(zip(locations, decoded, strict=True)):
            if item is SKIPPED:
                results[i] = ImageResult(location, ok=True, skipped=True)
            elif isinstance(item, InputError):
                results[i] = ImageResult.failed(location, item.reason, item)
            else:
                items.append(item)
                where.append(i)
        if items:
            try:
                output = self.pipeline.compute(items, self.spec.compiled)
            except Exception as exc:  # e.g. out of memory: the batch's inputs fail, with why
                reason = f"cannot explain its batch on {self.name}: {_one_line(exc)}"
                for i in where:
                    results[i] = ImageResult.failed(locations[i], reason, exc)
                return results
            finished = self.pool.map(lambda j: self.pipeline.finish(items[j], output, j),
                                     range(len(items)))
            for i, result in zip(where, finished, strict=True):
                results[i] = result
        return results


def _call(method, *args):
    import ray

    return ray.get(method.remote(*args))


def _row(result: ImageResult, worker: str = "", debug: bool = False, cancelled: bool = False,
         fatal: tuple[str, int] | None = None, warning: str | None = None) -> dict:
    """One input's row: the :class:`ImageResult` without its maps (small, JSON-able)."""
    top = ((result.record or {}).get("predictions") or [{}])[0]
    trace, exception = None, result.exception
    if debug and exception is not None:
        trace = "".join(traceback.format_exception(exception)).rstrip("\n")
    return {
        "input": str(result.path),
        "ok": result.ok,
        "skipped": result.skipped,
        "error": result.error,
        "files": [str(f) for f in result.files],
        "record": None if result.record is None else json.dumps(result.record),
        "top1_index": top.get("index"),
        "top1_label": top.get("label"),
        "top1_probability": top.get("probability"),
        "worker": worker,
        "trace": trace,
        "errno": getattr(exception, "errno", None),
        "strerror": getattr(exception, "strerror", None),
        "cancelled": cancelled,
        "warning": warning,
        "fatal": None if fatal is None else fatal[0],
        "fatal_status": None if fatal is None else fatal[1],
    }


class RemoteFailure(Exception):
    """Why an input failed on a worker: its traceback text (``--debug``), and the ``errno`` and
    ``strerror`` of an OSError (so a full disk stops the run as locally)."""

    def __init__(self, trace: str, errno: int | None = None, strerror: str | None = None):
        super().__init__(trace)
        self.trace, self.errno, self.strerror = trace, errno, strerror


def _result(row: dict, options: storage.StorageOptions) -> ImageResult:
    """The driver's :class:`ImageResult` for a worker's row."""
    path = storage.location(row["input"], options)
    files = tuple(storage.location(f, options) for f in row["files"] or ())
    record = None if row["record"] is None else json.loads(row["record"])
    exception = None
    if row.get("trace") or row.get("errno") is not None:
        exception = RemoteFailure(row.get("trace") or row["error"], row.get("errno"),
                                  row.get("strerror"))
    return ImageResult(path, ok=row["ok"], error=row["error"], record=record, files=files,
                       skipped=row["skipped"], exception=exception)


# --------------------------------------------------------------------------- the driver


class _ControlState:
    """Shared by the driver and the workers (as a Ray actor): stopped, the workers in a batch
    (by actor id: a worker restarted after its process died is not), rows finished."""

    def __init__(self):
        self.stopped, self.busy, self.finished = False, set(), 0

    def started(self, actor: str) -> None:
        self.busy.discard(actor)

    def begin(self, actor: str) -> bool:
        if self.stopped:
            return False
        self.busy.add(actor)
        return True

    def end(self, actor: str, rows: int) -> None:
        self.busy.discard(actor)
        self.finished += rows

    def stop(self) -> None:
        self.stopped = True

    def state(self) -> tuple[int, int]:
        return len(self.busy), self.finished


def _import_ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as exc:
        raise UsageError(
            f"--engine ray needs Ray Data ({exc.name or 'ray'} is missing): "
            "pip install 'camcli[ray]'"
        ) from None
    return ray


@contextlib.contextmanager
def connected(address: str | None = None, debug: bool = False):
    """Ray, connected to ``address`` (else ``RAY_ADDRESS``, else a local instance started for
    this run and stopped after it: private, see :func:`_private_instance`). Raises
    :class:`ClusterError` when Ray cannot start or the cluster cannot be reached. A Ray
    already initialised by the caller is used as it is."""
    address = address or os.environ.get("RAY_ADDRESS") or None
    local = not address or address == "local"
    with _private_instance() if local and not _ray_initialized() else contextlib.nullcontext():
        ray = _import_ray()
        _quiet_ray(debug)
        if ray.is_initialized():
            yield ray
            return
        where = f"the Ray cluster at {address}" if address else "a local Ray instance"
        if not local and address != "auto":
            _probe(address)
        settings = {"log_to_driver": debug,
                    "logging_level": logging.DEBUG if debug else logging.ERROR}
        if local:
            settings.update(address="local", include_dashboard=False)
        else:
            settings.update(address=address)
        try:
            ray.init(**settings)
            if local:
                _check_loopback(ray)
        except Exception as exc:
            with contextlib.suppress(Exception):
                ray.shutdown()
            if isinstance(exc, ClusterError):
                raise
            verb = "start" if local else "connect to"
            raise ClusterError(f"cannot {verb} {where}: {_one_line(exc)}") from exc
        try:
            yield ray
        finally:
            _join_ray_data_threads()
            with contextlib.suppress(Exception):
                ray.shutdown()


def _ray_initialized() -> bool:
    import sys

    ray = sys.modules.get("ray")
    return bool(ray is not None and getattr(ray, "is_initialized", lambda: False)())


#: Addresses a private instance may listen on.
LOOPBACK = ("127.0.0.1", "::1", "localhost")


@contextlib.contextmanager
def _private_instance():
    """The settings under which a local Ray instance is this machine's only, and this run's:

    - its node address is loopback, so its GCS, raylet, object and node managers, agents and
      workers all listen on 127.0.0.1 (Ray's gRPC servers bind 127.0.0.1 when the node's
      address is, else every interface; ``--node-ip-address``/``_node_ip_address`` cannot say
      loopback: Ray swaps it for the network address). Ray picks loopback itself where it
      keeps clusters local, on macOS and Windows; ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``
      asks for that here. :func:`_check_loopback` verifies it after the start;
    - token authentication with a random token of the run's (other users of this machine
      reach its loopback too). It lives in this process's environment, which Ray's processes
      inherit (readable by the same user only), and nowhere else: not in ``~/.ray``, where
      Ray would write one of its own, nor on a command line, a log or the screen.

    The environment is restored afterwards (a Python caller may connect to its own cluster
    next)."""
    import secrets

    settings = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "token",
                "RAY_AUTH_TOKEN": secrets.token_hex(32), "RAY_AUTH_TOKEN_PATH": None}
    saved = {name: os.environ.get(name) for name in settings}
    _set_environment(settings)
    try:
        yield
    finally:
        _set_environment(saved)


def _set_environment(values: dict) -> None:
    """``os.environ`` updated (None: removed), and what Ray read from it at import refreshed
    when Ray is already imported (it is read again as Ray itself does when it turns token
    authentication on)."""
    import sys

    for name, value in values.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    if "ray" not in sys.modules:
        return
    with contextlib.suppress(ImportError, AttributeError):
        from ray._private import ray_constants

        ray_constants.ENABLE_RAY_CLUSTER = os.environ.get(
            "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "1").lower() not in ("0", "false")
    with contextlib.suppress(ImportError, AttributeError):
        from ray._raylet import AuthenticationTokenLoader, Config

        Config.initialize("")
        AuthenticationTokenLoader.instance().reset_cache()


def _check_loopback(ray) -> None:
    """The instance just started is on loopback, or a ClusterError (never a Ray open to the
    network because a version of Ray ignored the setting)."""
    node = ray.util.get_node_ip_address()
    if node not in LOOPBACK:
        raise ClusterError(
            f"refusing to run on a local Ray instance that listens on {node}, not on loopback "
            "only; start Ray yourself and give --ray-address")


#: How long a disconnect waits for Ray Data's threads of a dataset closed early (seconds).
RAY_DATA_THREADS_GRACE = 10.0


def _join_ray_data_threads() -> None:
    """Wait for the threads of Ray Data executors and iterators closed early (they are told to
    stop, not joined): one still in Ray when it shuts down makes Ray end the whole process at
    once, before camcli's last lines and with another exit status. Those are the executor
    threads and the iterators' workers (local functions); not the parked, long-lived ones."""
    deadline = time.monotonic() + RAY_DATA_THREADS_GRACE
    for thread in threading.enumerate():
        target = getattr(thread, "_target", None)  # a Thread(target=...): its function
        if target is None:
            ending = type(thread).__module__.startswith("ray.data")  # an executor
        else:
            ending = getattr(target, "__module__", "").startswith("ray.data") and \
                "<locals>" in getattr(target, "__qualname__", "")
        if ending and thread is not threading.current_thread():
            thread.join(max(0.0, deadline - time.monotonic()))


def _probe(address: str, timeout: float = 5.0) -> None:
    """Fail at once, with the reason, when nothing answers at ``address`` (Ray would wait)."""
    text = address.split("://", 1)[-1].rstrip("/")
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        host, port = text, "10001" if address.startswith("ray://") else "6379"
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            pass
    except OSError as exc:
        reason = exc.strerror or str(exc) or type(exc).__name__
        if isinstance(exc, TimeoutError | socket.timeout):
            reason = f"no answer in {timeout:.0f} s"
        raise ClusterError(f"cannot reach the Ray cluster at {address}: {reason}") from None
    if not address.startswith("ray://"):
        _check_token(address)


def _check_token(address: str) -> None:
    """A cluster with token authentication that refuses ours: say so now (``ray.init`` would
    retry for ever). Asks the GCS as ``ray status`` does; skipped if Ray's client changed."""
    try:
        from ray._raylet import GcsClient
        from ray.exceptions import AuthenticationError
    except ImportError:
        return
    try:
        GcsClient(address=address)
    except AuthenticationError:
        raise ClusterError(
            f"cannot connect to the Ray cluster at {address}: it wants its authentication "
            "token (set RAY_AUTH_TOKEN, or RAY_AUTH_TOKEN_PATH, to the cluster's)"
        ) from None
    except Exception:  # anything else: ray.init says it, with its own words
        return


def _quiet_ray(debug: bool) -> None:
    """Keep Ray's own chatter off stdout/stderr (stdout carries --json lines only).

    Ray prints its workers' errors and logs on the driver's stdout through
    ``ray._private.worker``; camcli reports failures itself, per input. With ``debug`` they
    go to stderr instead, prefixed.
    """
    import ray.data
    from ray._private import worker as ray_worker

    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    context.max_errored_blocks = -1  # a batch given up is reported by name (see _stream)
    for name in ("ray", "ray.data", "ray.train", "ray.tune"):
        logging.getLogger(name).setLevel(logging.DEBUG if debug else logging.CRITICAL)
    if not debug:
        ray_worker._worker_logs_enabled = False
        return
    import sys

    def to_stderr(data, ignore_prefix=False):
        for line in data.get("lines", ()):
            sys.stderr.write(f"camcli: debug: ray: {printable(line)}\n")

    ray_worker.print_to_stdstream = to_stderr


def run(
    paths: Iterable[str],
    model_options: dict,
    output: OutputOptions | None = None,
    ray_options: RayOptions | None = None,
    *,
    recursive: bool = False,
    stdin: Iterable[str] | None = None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    skip_existing: bool = False,
    shard: Shard | None = None,
    storage_options: storage.StorageOptions = storage.NO_OPTIONS,
    stop: threading.Event | None = None,
    stats: RunStats | None = None,
    debug: bool = False,
    max_input_bytes: int | None = None,
    follow_symlinks: bool = True,
) -> Iterator[ImageResult]:
    """Explain every input on a Ray cluster; yields one result per input, like
    :meth:`camcli.api.Explainer.run` (same arguments; ``model_options`` are the Explainer's).

    Lists the inputs, connects (or starts Ray) and waits for the first batch before
    returning, so a cluster that cannot be reached or a model that cannot load raises here.
    No input at all: returns at once, with no Ray started and no cluster reached.
    """
    from camcli.runner import Inputs, stop_when_full

    output = output or OutputOptions()
    ray_options = ray_options or RayOptions()
    stats = stats or RunStats()
    stop = stop or threading.Event()
    batch_size = int(model_options.get("batch_size") or 16)
    inputs = Inputs(tuple(paths), recursive, stdin, max_pixels, skip_existing, shard,
                    storage_options, max_input_bytes, follow_symlinks)
    found, _, _ = inputs.discover(stats)
    found = iter(found)
    head = next(found, None)
    if head is None:  # nothing to do: no Ray is started, no cluster reached
        return iter(())
    found = itertools.chain([head], found)
    session = connected(ray_options.address, debug)
    ray = session.__enter__()
    try:
        shape = plan(ray, ray_options)
        found = _windows(iter(found), window_size(shape[0], batch_size))
        window = next(found, [])
        control = ray.remote(num_cpus=0)(_ControlState).remote()
        spec = WorkerSpec(model_options, output, inputs.max_pixels, skip_existing,
                          compiled=len(window) > EAGER_MAX_IMAGES, cwd=os.getcwd(),
                          debug=debug, control=control,
                          environment=storage.backend_environment(), max_bytes=inputs.max_bytes)
        windows = itertools.chain([window], found) if window else iter(())
        del window
        results = _run_windows(ray, windows, spec, shape, batch_size, control, stop,
                               storage_options)
        first = next(results, None)
    except BaseException:
        session.__exit__(None, None, None)
        raise
    return stop_when_full(_closing(first, results, session))  # a full disk: as locally


def _closing(first, results, session) -> Iterator[ImageResult]:
    try:
        if first is not None:
            yield first
            yield from results
    finally:
        results.close()
        session.__exit__(None, None, None)


def window_size(workers: int, batch_size: int) -> int:
    """Inputs per window: enough batches that each worker's model load is amortised over
    :data:`WINDOW_BATCHES_PER_WORKER` batches, and at least :data:`MIN_WINDOW_BATCHES`."""
    return max(MIN_WINDOW_BATCHES, workers * WINDOW_BATCHES_PER_WORKER) * batch_size


def _windows(found: Iterator, size: int) -> Iterator[list]:
    """The listing in windows of ``size`` inputs, listed as they are needed."""
    while window := list(itertools.islice(found, size)):
        yield window


def _run_windows(ray, windows, spec, shape, batch_size, control, stop, options):
    """Each window of the listing as a dataset of its own, one after the other (see the
    module doc): the driver holds one window's blocks, whatever the number of inputs."""
    for window in windows:
        blocks, sizes = _put_blocks(ray, window, batch_size * BLOCK_BATCHES)
        del window
        dataset = _map(ray.data.from_arrow_refs(blocks), spec, *shape, batch_size)
        yield from _stream(ray, dataset, blocks, sizes, control, stop, options)
        if stop.is_set():
            return


def _wait_for_batches(ray, control) -> None:
    """Workers start no new batch; wait (:data:`STOP_GRACE` at most) for those in progress,
    as a local run's pools do: closing the dataset's iterator would end the workers."""
    deadline = _stop_workers(ray, control)
    while not _settled(ray, control, deadline):
        time.sleep(0.1)


def _stop_workers(ray, control) -> float:
    """Workers start no new batch; returns until when those in progress are waited for."""
    ray.get(control.stop.remote())
    return time.monotonic() + STOP_GRACE


def _settled(ray, control, deadline: float, consumed: int | None = None) -> bool:
    """No batch in progress (and, given the rows ``consumed``, every row finished came back);
    or ``deadline`` passed, which one warning line says."""
    busy, finished = ray.get(control.state.remote())
    if busy == 0 and (consumed is None or consumed >= finished):
        return True
    if time.monotonic() > deadline:
        _warn(f"stopped waiting for {busy} batch(es) still in progress after {STOP_GRACE:g} "
              "s; their outputs may be missing (--skip-existing redoes them)")
        return True
    return False


def _warn(text: str) -> None:
    """One ``camcli: warning:`` line on stderr, above a progress bar if there is one."""
    import sys

    from tqdm import tqdm

    tqdm.write(f"camcli: warning: {printable(text)}", file=sys.stderr)


def _put_blocks(ray, found: Iterable, rows: int) -> tuple[list, list[int]]:
    """The listing as blocks of ``rows`` paths in the object store: their references and
    sizes (the driver keeps nothing else of it)."""
    import pyarrow as pa

    blocks, sizes, chunk = [], [], []

    def put():
        first = len(blocks)
        table = pa.table({"path": [str(p) if not isinstance(p, storage.Url) else p.text
                                   for p in chunk],
                          "block": [first] * len(chunk), "index": list(range(len(chunk)))})
        blocks.append(ray.put(table))
        sizes.append(len(chunk))
        chunk.clear()

    for path in found:
        chunk.append(path)
        if len(chunk) == rows:
            put()
    if chunk:
        put()
    return blocks, sizes


def plan(ray, options: RayOptions, spare: int = 0) -> tuple[int, float, float]:
    """``(workers, cpus, gpus)`` per worker for this cluster, or a UsageError when the cluster
    cannot ever run one worker as asked. ``spare``: CPUs of a node the default leaves to
    other tasks (a dataset's reads: workers holding every CPU would starve them)."""
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    largest = max((n.get("CPU", 0) for n in nodes), default=0)
    cpus = options.cpus or max(1.0, min(float(DEFAULT_CPUS), largest - spare))
    gpus = options.gpus
    fits = sum(_fit(n, cpus, gpus) for n in nodes)
    if fits == 0:
        have = ", ".join(f"{n.get('CPU', 0):g} CPUs/{n.get('GPU', 0):g} GPUs" for n in nodes)
        raise UsageError(f"no Ray node can hold a worker of {cpus:g} CPUs and {gpus:g} GPUs "
                         f"(nodes: {have or 'none'}); lower --ray-cpus/--ray-gpus")
    return options.workers or fits, cpus, gpus


def _fit(node: dict, cpus: float, gpus: float) -> int:
    count = int(node.get("CPU", 0) // cpus) if cpus else 1 << 30
    if gpus:
        count = min(count, int(node.get("GPU", 0) // gpus))
    return count


def _map(dataset, spec: WorkerSpec, workers: int, cpus: float, gpus: float, batch_size: int):
    import warnings

    with warnings.catch_warnings():  # max_task_retries: deprecated, still the only way to bound
        warnings.filterwarnings("ignore", message=".*ray_remote_args.*")
        return _map_batches(dataset, spec, workers, cpus, gpus, batch_size)


def _map_batches(dataset, spec, workers, cpus, gpus, batch_size):
    return dataset.map_batches(
        Worker,
        fn_constructor_kwargs={"spec": spec},
        batch_size=batch_size,
        batch_format="pyarrow",
        concurrency=workers,
        num_cpus=cpus,
        num_gpus=gpus or None,
        max_restarts=-1,  # a dead worker comes back ...
        max_task_retries=RETRIES,  # ... and its batch is run again, this many times at most
    )


def _stream(ray, dataset, blocks, sizes, control, stop, options) -> Iterator[ImageResult]:
    """The rows as results; then each input of a batch given up, as failed (see the module
    doc). After ``stop``: the batches in progress, then the end."""
    received = [0] * len(blocks)  # a bit per input: its row came back
    consumed, deadline, warned = 0, None, set()
    batches = iter(dataset.iter_batches(batch_size=None, batch_format="pyarrow"))
    try:
        for batch in batches:
            for row in batch.to_pylist():
                if not _taken(row, received, warned):
                    continue
                consumed += 1
                try:
                    yield _result(row, options)
                except GeneratorExit:  # closed early (a full disk, a reader gone): before Ray
                    if control is not None:  # Data ends the workers, their writes end
                        _wait_for_batches(ray, control)
                    raise
            if stop.is_set() and deadline is None:
                deadline = _stop_workers(ray, control)
            if deadline is not None and _settled(ray, control, deadline, consumed):
                return
    finally:  # ends Ray Data's run now, while connected (not when garbage collected)
        getattr(batches, "close", lambda: None)()
    if stop.is_set():
        return
    for block, size in enumerate(sizes):
        if received[block] != (1 << size) - 1:
            table = ray.get(blocks[block])
            for index, path in enumerate(table.column("path").to_pylist()):
                if not received[block] >> index & 1:
                    yield ImageResult.failed(
                        storage.location(path, options),
                        "lost: Ray gave its batch up, its worker dead (a crash, out of "
                        f"memory, a lost node) {RETRIES + 1} times or for good; see Ray's logs",
                    )


def _taken(row: dict, received: list[int], warned: set) -> bool:
    """Whether a row is an input's result (its bit set in ``received``), not a cancelled
    batch's; shows a worker's warning the first time; a fatal row stops the run."""
    if row["fatal"] is not None:
        error = CamcliError(row["fatal"])
        error.exit_status = ExitStatus(row["fatal_status"])
        raise error
    if row["warning"] and row["warning"] not in warned:  # once per run, as locally
        warned.add(row["warning"])
        _warn(row["warning"])
    if row["cancelled"]:
        return False
    received[row["block"]] |= 1 << row["index"]
    return True


def _one_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


# --------------------------------------------------------------------------- Python API


def explain_dataset(
    dataset,
    *,
    out_dir=None,
    write: bool = True,
    skip_existing: bool = False,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    storage_options: dict | None = None,
    workers: int | None = None,
    cpus: float | None = None,
    gpus: float = 0.0,
    **options,
):
    """Explain a Ray dataset of images, lazily: returns a dataset of rows (:data:`ROW_FIELDS`).

    ``dataset`` has a ``path`` column (strings: files or URLs, read by the workers), or
    ``path`` and ``bytes`` (``ray.data.read_binary_files(..., include_paths=True)``), the
    image already read; then outputs go under ``out_dir``, which is required. The other
    keyword arguments are :class:`~camcli.api.Explainer`'s (``model``, ``weights``,
    ``method``, ...) and :class:`~camcli.pipeline.OutputOptions`' (``colormap``, ...).
    Outputs are written by the workers as a local run writes them.
    """
    from camcli.api import take_output_options

    ray = _import_ray()
    if "bytes" in dataset.columns() and out_dir is None and write:
        raise UsageError("a dataset of bytes needs out_dir: its outputs cannot go beside it")
    options = dict(options, out_dir=out_dir, write=write)
    output = take_output_options(options, storage_options)  # the rest are the Explainer's
    spec = WorkerSpec(options, output, max_pixels, skip_existing, compiled=True,
                      cwd=os.getcwd(), environment=storage.backend_environment())
    count, cpu, gpu = plan(ray, RayOptions(workers=workers, cpus=cpus, gpus=gpus), spare=1)
    batch_size = int(options.get("batch_size") or 16)
    rows = _map(dataset, spec, count, cpu, gpu, batch_size)
    return rows.select_columns(list(ROW_FIELDS))

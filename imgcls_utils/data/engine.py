"""Where the data stages run: in this process, or as tasks on a Ray cluster (the ``engine`` keys).

Scan, duplicate grouping and shard writing are each a list of independent tasks: a batch of
files to inspect, a few bands of hash bits to match, one shard to write. Each task is a plain
function of its item, so the same code runs in a thread of this process or as a Ray task on
another core or machine, and the outputs are the same bytes either way. Ray schedules the
tasks, retries one whose worker died (``max_retries``), and keeps data shared by every task
(the hashes) in its object store, out of the driver's memory. bench/README.md has the
measurements behind choosing Ray over Apache Beam and behind ``engine.min_files``.

``local`` runs tasks on a thread pool (Pillow, hashlib and TensorFlow's writer release the GIL);
``ray`` starts a Ray instance on this machine or joins a cluster through ``engine.options``
(``ray.init`` keyword arguments, passed through as ``tfds build --beam_pipeline_options``
passes Beam's: ``{address: auto}`` joins the cluster ``ray start`` made on this machine).
"""

from __future__ import annotations

import importlib.util
import logging
import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from itertools import islice
from dataclasses import dataclass, field, replace
from typing import Any

from ..config import Section
from ..errors import UserError

LOCAL, RAY, AUTO = "local", "ray", "auto"
# A task whose worker process died (killed, out of memory, its machine lost) runs again.
TASK_RETRIES = 3
START_ATTEMPTS = 3
IN_FLIGHT_PER_CPU = 4  # enough queued that no core waits for the driver
RAY_DEFAULTS = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.ERROR}


def ray_installed() -> bool:
    return importlib.util.find_spec("ray") is not None


@dataclass(frozen=True)
class Engine:
    """How to run a stage's tasks: ``runner`` local, ray or auto (ray when it is installed and
    a source has at least ``min_files`` files: see ``for_files``), ``workers`` tasks at once
    (None: one per core), ``options`` for ``ray.init``."""

    runner: str = LOCAL
    workers: int | None = None
    options: dict = field(default_factory=dict)
    min_files: int = 0

    @classmethod
    def from_config(cls, engine: Section) -> Engine:
        if engine.runner == RAY and not ray_installed():
            raise UserError("engine.runner is ray, but Ray is not installed; install it with "
                            "pip install 'imgcls[scale]' (or set engine.runner to local)")
        workers = None if engine.workers == AUTO else engine.workers
        return cls(engine.runner, workers, dict(engine.options), engine.min_files)

    def for_files(self, files: int) -> Engine:
        """This engine for a source of ``files`` files: auto decided."""
        if self.runner != AUTO:
            return self
        runner = RAY if ray_installed() and files >= self.min_files else LOCAL
        return replace(self, runner=runner)

    def map(self, function: Callable, items: list, shared: Any = None) -> list:
        """``[function(item, shared) for item in items]``, run as tasks."""
        results = [None] * len(items)
        for index, result in self.map_unordered(function, items, shared):
            results[index] = result
        return results

    def map_unordered(self, function: Callable, items: list,
                      shared: Any = None) -> Iterator[tuple[int, Any]]:
        """``(index, function(item, shared))`` for every item, as the tasks finish: a caller
        can save each result at once, so an interrupted stage keeps what was done."""
        if not items:
            return iter(())
        if self.runner == RAY:
            return _ray_map(function, items, shared, self.workers, self.options)
        return _local_map(function, items, shared, self.workers)

    def describe(self) -> str:
        workers = f"{self.workers} worker(s)" if self.workers else "a worker per core"
        return f"{self.runner} ({workers})"


def _local_map(function: Callable, items: list, shared: Any,
               workers: int | None) -> Iterator[tuple[int, Any]]:
    with ThreadPoolExecutor(workers or os.cpu_count()) as pool:
        futures = [pool.submit(function, item, shared) for item in items]
        for index, future in enumerate(futures):
            yield index, future.result()


def _ray_map(function: Callable, items: list, shared: Any, workers: int | None,
             options: dict) -> Iterator[tuple[int, Any]]:
    """Ray's pattern for many tasks: a bounded number in flight (so the driver and the object
    store hold a few tasks' inputs, not all), the next submitted as one finishes."""
    import ray

    _start_ray(workers, options)
    task = ray.remote(max_retries=TASK_RETRIES, retry_exceptions=False)(function)
    shared_ref = ray.put(shared)  # one copy in the object store, read by every task
    in_flight = IN_FLIGHT_PER_CPU * int(ray.cluster_resources().get("CPU", 1))
    waiting, pending = iter(enumerate(items)), {}
    try:
        while True:
            for index, item in islice(waiting, max(0, in_flight - len(pending))):
                pending[task.remote(item, shared_ref)] = index
            if not pending:
                return
            done, _ = ray.wait(list(pending), num_returns=1)
            yield pending.pop(done[0]), _result(ray, done[0])
    finally:
        for ref in pending:  # a failed or abandoned stage leaves no task running
            ray.cancel(ref, force=True)


def _result(ray, ref) -> Any:
    """The task's result; its own exception (a full disk, a DataError) as itself, not wrapped."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as error:
        raise error.cause from None


def _start_ray(workers: int | None, options: dict) -> None:
    """Start (or join, with ``address`` in ``options``) Ray once per process. Ray waits a fixed
    30 s for its node to register; on a machine busy with other work that can pass, and a
    second try then finds the processes warm."""
    import ray

    if ray.is_initialized():
        return
    settings = {**RAY_DEFAULTS, **options}
    if "address" not in settings and not os.environ.get("RAY_ADDRESS"):  # set in a Ray job
        # This process's own instance, even when another one runs on the machine (Ray would
        # join that one), running ``workers`` tasks at once.
        settings["address"] = "local"
        if workers:
            settings.setdefault("num_cpus", workers)
    for attempt in range(START_ATTEMPTS):
        try:
            ray.init(**settings)
            return
        except Exception as error:  # Ray raises a bare Exception for this one
            if "timed out during startup" not in str(error) or attempt == START_ATTEMPTS - 1:
                raise
            ray.shutdown()


def batches(items: Iterable, size: int) -> list[list]:
    """``items`` in consecutive lists of ``size`` (the last may be shorter)."""
    items = list(items)
    return [items[start:start + size] for start in range(0, len(items), size)]

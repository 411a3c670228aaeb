"""Where a plan search's candidate simulations run: this process, this machine's processes, or
Ray tasks on an existing Ray cluster. Each is a `Mapper`: `mapper(fn, items)` returns
`[fn(x) for x in items]` in the order of `items` (never of completion), so the search, which
decides what to simulate next from the results of a fixed wave, takes the same path and
gives the same numbers wherever its simulations run.

Ray is optional (`pip install "meshplan[ray]"`); the nodes of the cluster need meshplan
installed (a task imports `meshplan.serve.plan.search` there).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from typing import Any

from meshplan.errors import MeshplanError

Mapper = Callable[[Callable[[Any], Any], list[Any]], list[Any]]
RAY_EXTRA = 'pip install "meshplan[ray]"'


def cores() -> int:
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") \
        else (os.cpu_count() or 1)


@contextmanager
def local(workers: int | None) -> Iterator[Mapper]:
    """`workers` processes (None: every core; 1: this process)."""
    n = cores() if workers is None else workers
    if n <= 1:
        yield lambda fn, items: [fn(x) for x in items]
        return
    pool = ProcessPoolExecutor(max_workers=n)
    try:
        yield lambda fn, items: list(pool.map(fn, items))
    finally:
        pool.shutdown()


@contextmanager
def ray_cluster(address: str) -> Iterator[Mapper]:
    """One Ray task per item on the cluster at `address` (`auto`: the one the environment
    points to, RAY_ADDRESS or the cluster started on this machine with `ray start`); never
    starts a cluster of its own. A driver already connected (`ray.init` before the call)
    is used as it is and left connected."""
    try:
        import ray
    except ImportError:
        raise MeshplanError(f"--ray: Ray is not installed; {RAY_EXTRA}") from None
    connected_here = not ray.is_initialized()
    if connected_here:
        try:
            ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False,
                     configure_logging=True)
        except (ConnectionError, ValueError, RuntimeError) as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise MeshplanError(f"--ray={address}: no Ray cluster reached ({first})") from None
    task_cache: dict[Callable[[Any], Any], Any] = {}

    def mapper(fn: Callable[[Any], Any], items: list[Any]) -> list[Any]:
        task = task_cache.get(fn)
        if task is None:
            task = task_cache[fn] = ray.remote(fn)
        # ray.get of the list returns the results in the order of the refs
        return list(ray.get([task.remote(x) for x in items]))

    try:
        yield mapper
    finally:
        if connected_here:
            ray.shutdown()


@contextmanager
def executor(workers: int | None = None, ray_address: str | None = None) -> Iterator[Mapper]:
    """Ray tasks at `ray_address` when given, else `local(workers)`."""
    if ray_address is not None and workers is not None:
        raise MeshplanError("--workers and --ray: give one (Ray schedules its own workers)")
    if ray_address is not None:
        if not ray_address.strip():
            raise MeshplanError("--ray: give a cluster address or auto")
        with ray_cluster(ray_address) as m:
            yield m
    else:
        with local(workers) as m:
            yield m

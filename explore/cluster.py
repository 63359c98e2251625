"""Where trials run: a Dask `LocalCluster` on this machine, or an existing scheduler.

`open_client(None)` starts a local cluster (worker processes, one thread
each, everything bound to loopback, the scheduler's HTTP endpoint on a free
port) and closes it on exit;
`open_client("tcp://host:8786")` connects to a running `dask scheduler` and
leaves it running. An address that does not answer within `timeout_s` is an
`ExploreError`, not a hang.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager

from distributed import Client, LocalCluster

from .errors import ExploreError

__all__ = ["busy_workers", "open_client"]


@contextmanager
def open_client(
    scheduler: str | None, *, workers: int | None = None, timeout_s: float = 10.0
) -> Iterator[Client]:
    """A Dask client: on `scheduler` if given, else on a fresh local cluster of `workers`."""
    for name in ("distributed", "distributed.nanny", "distributed.scheduler", "tornado"):
        logging.getLogger(name).setLevel(logging.ERROR)
    if scheduler is not None:
        try:
            client = Client(scheduler, timeout=f"{timeout_s}s", set_as_default=False)
        except (OSError, TimeoutError, ValueError) as exc:
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ExploreError(f"--scheduler {scheduler}: cannot connect ({reason})") from None
        try:
            yield client
        finally:
            client.close()
        return
    n = workers or max(1, min(2, os.cpu_count() or 1))
    with (
        LocalCluster(
            n_workers=n,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address="127.0.0.1:0",
            silence_logs=logging.ERROR,
        ) as cluster,
        Client(cluster, set_as_default=False) as client,
    ):
        yield client


def busy_workers(client: Client) -> tuple[int, int]:
    """(workers with a task, workers) on the client's scheduler."""
    processing = client.processing()
    return sum(1 for tasks in processing.values() if tasks), len(processing)

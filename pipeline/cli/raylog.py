"""Ray's own output kept off the terminal: ``dip run`` and ``dip evaluate`` print their progress
bar and summary, and Ray's (and Ray Data's) log lines go to a file the run names.

Ray writes in three ways: Python loggers (``ray``, ``ray.data``: the token notice, "Started a local
Ray instance", Ray Data's plan and progress lines), its C++ core worker, straight to file
descriptor 2 (``E ... core_worker.cc`` lines), and the cluster's error messages, printed to
``sys.stdout`` (``(raylet) Task ... failed``, "node ... marked dead" when a node is lost).
``ray_output_to`` sends all three to the log file while the run lasts (descriptor 2 only where stderr
is a real file descriptor, not under a test runner's capture) and hands the terminal to the caller's
console through a duplicate of the original stderr.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

RAY_LOGGERS = ("ray", "ray.data", "ray.train", "ray.tune")


def log_path(output: str, run_id: str) -> Path:
    """Where a run's Ray log goes: ``<output>/runs/<run_id>.ray.log`` for a local output, else the
    temporary folder's ``dip/<run_id>.ray.log`` (object storage takes no appended log). ``run_id`` is
    a name (``storage.check_name``), never a path."""
    from .. import storage

    name = f"{storage.check_name(run_id, 'run id')}.ray.log"
    if "://" in output and not output.startswith("file://"):
        return Path(tempfile.gettempdir()) / "dip" / name
    return Path(storage.under(output.removeprefix("file://"), "runs", name))


@contextlib.contextmanager
def ray_output_to(path: Path) -> Iterator[object]:
    """While open, Ray's log lines go to ``path``; yields the stream the terminal output should use."""
    path.parent.mkdir(parents=True, exist_ok=True)
    log = open(path, "a", buffering=1)  # noqa: SIM115  (closed below, after the descriptors are restored)
    handler = logging.StreamHandler(log)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    saved = {}
    for name in RAY_LOGGERS:
        logger = logging.getLogger(name)
        saved[name] = (logger.handlers[:], logger.propagate)
        logger.handlers = [handler]
        logger.propagate = False
    terminal, saved_fd, stdout = sys.stderr, None, sys.stdout
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # a test runner's captured stream: loggers only
        fd = None
    try:
        if fd is not None:
            sys.stderr.flush()
            saved_fd = os.dup(fd)
            terminal = os.fdopen(os.dup(saved_fd), "w", buffering=1)
            os.dup2(log.fileno(), fd)
        sys.stdout = log
        yield terminal
    finally:
        sys.stdout = stdout
        if saved_fd is not None:
            with contextlib.suppress(OSError, ValueError):
                sys.stderr.flush()
            os.dup2(saved_fd, fd)
            os.close(saved_fd)
            terminal.close()
        for name, (handlers, propagate) in saved.items():
            logger = logging.getLogger(name)
            logger.handlers, logger.propagate = handlers, propagate
        log.close()

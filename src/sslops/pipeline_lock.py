"""One pipeline run at a time per project: an exclusive lock that a second run waits for, up to a limit.

A leaf module (stdlib only) because every stage takes it, and so every stage depends on it (dvc.yaml deps); the
flow driver (`sslops.orchestration`) re-exports it.

Runs share the DVC workspace, params.yaml (overrides) and the MLflow store, so they must not overlap. DVC's own
repository lock is held per DVC command only, not across the stages of a run.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from sslops.errors import SslopsError

LOCK_PATH = Path(".dvc") / "tmp" / "sslops-pipeline.lock"  # .dvc/tmp is DVC's own git-ignored scratch


class PipelineBusy(SslopsError):
    """Another pipeline run held the project lock for longer than the configured wait."""


@contextlib.contextmanager
def project_lock(root: Path, timeout_s: float, holder: str, on_wait: Callable[[str], None]) -> Iterator[None]:
    """Hold the project's pipeline lock; wait up to `timeout_s` for a run that holds it, then fail.

    An OS file lock (flock), so it is released when its holder exits, even after kill -9; the file
    names the holder for the error message. `timeout_s=0` fails at once.
    """
    path = root / LOCK_PATH
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        deadline = time.monotonic() + timeout_s
        waiting = False
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                fh.seek(0)
                other = fh.read().strip() or "an unknown process"
                left = deadline - time.monotonic()
                if left <= 0:
                    raise PipelineBusy(
                        f"another pipeline run holds {path} ({other}); waited {timeout_s:g} s "
                        f"(flow.lock_timeout_s in params.yaml) and gave up without touching the workspace."
                    ) from None
                if not waiting:
                    on_wait(f"waiting up to {timeout_s:g} s for the pipeline lock held by {other}")
                    waiting = True
                time.sleep(min(1.0, left))
        fh.truncate(0)
        fh.write(f"{holder}, pid {os.getpid()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        fh.flush()
        try:
            yield
        finally:
            fh.truncate(0)
            fcntl.flock(fh, fcntl.LOCK_UN)


# Set (to the project folder) in the environment of everything a lock holder starts: `sslops repro`'s and a flow's
# DVC and the stage commands DVC runs. A stage started any other way (a plain `dvc repro`, `python -m sslops
# <stage>`) takes the lock itself, so it never runs between a flow's stages or while a flow's overrides are applied.
LOCK_HELD_ENV = "SSLOPS_PIPELINE_LOCK_HELD"


@contextlib.contextmanager
def stage_lock(root: Path, timeout_s: float, holder: str, on_wait: Callable[[str], None]) -> Iterator[None]:
    """The project lock around one stage, unless the process that started it holds it already.

    Under torchrun only rank 0 takes it (the other ranks are part of the same stage run). A stage that DVC started
    (`dvc repro` holds DVC's own repository lock meanwhile) or one of several torchrun ranks does not wait: a flow
    between its stages would wait for DVC's lock while this stage waited for the flow's, so it fails at once,
    naming the holder.
    """
    held = os.environ.get(LOCK_HELD_ENV) == str(root)
    if held or os.environ.get("RANK", "0") != "0":
        yield
        return
    started_by_dvc = "DVC_STAGE" in os.environ  # set by DVC 3 for the commands of the stages it runs
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1  # the other ranks would time out in their rendezvous
    with project_lock(root, 0 if started_by_dvc or distributed else timeout_s, holder, on_wait):
        yield

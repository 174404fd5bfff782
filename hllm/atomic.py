"""Replace a file or a directory as a whole: readers see the old one or the new one, never a mix."""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from hllm.errors import BusyError

log = logging.getLogger(__name__)


def write_text(path: Path, text: str) -> None:
    """Write `path` through a temp file beside it and a rename: never half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def swap_dir(staged: Path, final: Path) -> None:
    """Move a fully written `staged` directory to `final`, replacing what was there.

    Two renames on one filesystem; between them only `final.old` exists, so a crash
    there loses nothing (the previous version is still on disk under that name).
    """
    old = final.with_name(final.name + ".old")
    recover_dir(final)  # an earlier swap died between its renames: .old is the only copy
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    staged.rename(final)
    shutil.rmtree(old, ignore_errors=True)


def recover_dir(final: Path) -> bool:
    """Finish a swap_dir that died between its two renames; True if it had to.

    Then `final` is missing and `final.old` holds the last complete version: it is
    moved back, so readers (and `--resume`) find it under its own name again.
    """
    old = final.with_name(final.name + ".old")
    if final.exists() or not old.is_dir():
        return False
    old.rename(final)
    return True


@contextmanager
def exclusive(lock_file: Path, what: str, wait: bool = False) -> Iterator[None]:
    """Hold an exclusive lock on `lock_file` for the block, or fail at once naming the holder.

    wait=True: block until the holder is done instead (for work whose result the waiter
    then reuses, such as a one-time model conversion).
    flock is released by the kernel when the holder dies, so a crashed run never leaves
    a stale lock behind; the file itself (holding the pid) stays.
    """
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_file, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            if not wait:
                raise BusyError(f"{lock_file.parent}: another {what} is running there ({holder}); "
                                "wait for it to finish or use another directory") from None
            log.info("waiting for another %s (%s) to finish", what, holder)
            fcntl.flock(fh, fcntl.LOCK_EX)
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()}\n")
        fh.flush()
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)

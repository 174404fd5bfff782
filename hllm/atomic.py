"""Replace a directory as a whole: readers see the old one or the new one, never a mix."""

from __future__ import annotations

import shutil
from pathlib import Path


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

"""``relay backup``: a consistent copy of the database, taken while relay runs.

SQLite's online backup API copies the file a few pages at a time. The source
connection holds one read transaction for the whole copy, so in WAL mode the copy
is the database as it was when the backup started, while a running relay goes on
writing (its commits land in the WAL, which the copy does not see).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sqlite3
from pathlib import Path

from .errors import RelayError


class BackupError(RelayError):
    pass


@dataclasses.dataclass
class BackupResult:
    path: Path
    size: int  # bytes
    events: int


def backup(db: Path, target: Path, *, force: bool = False, pages: int = 1024) -> BackupResult:
    """Copy the database at ``db`` to ``target``.

    The copy is written next to ``target`` under a temporary name and renamed when
    complete, so a failed backup never leaves a half-written file behind.

    :raises BackupError: when ``db`` does not exist, or ``target`` exists and
        ``force`` is not given.
    """
    db, target = Path(db), Path(target)
    if not db.exists():
        raise BackupError(f"there is no database at {db}")
    if target.exists() and not force:
        raise BackupError(f"{target} already exists (use --force to overwrite it)")
    if target.resolve() == db.resolve():
        raise BackupError("the backup must go to another file than the database itself")
    partial = target.with_name(target.name + ".partial")
    partial.unlink(missing_ok=True)
    source = sqlite3.connect(str(db), timeout=30, isolation_level=None)
    try:
        source.execute("PRAGMA busy_timeout = 30000")
        # One read transaction for the whole copy: a consistent snapshot that the
        # relay's own commits meanwhile do not change (nor restart).
        source.execute("BEGIN")
        source.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
        with contextlib.closing(sqlite3.connect(str(partial))) as copy:
            source.backup(copy, pages=pages)
            copy.execute("PRAGMA journal_mode = DELETE")  # one self-contained file
            events = int(copy.execute("SELECT COUNT(*) FROM events").fetchone()[0])
        source.execute("COMMIT")
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    finally:
        source.close()
    os.replace(partial, target)
    return BackupResult(target, target.stat().st_size, events)

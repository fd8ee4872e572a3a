"""The writer (relay/store.py ``Writer``): group commits on the event loop's thread.

Real SQLite files; a second connection plays the other process that holds the
write lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from pathlib import Path

import pytest

from relay.errors import StorageUnavailable
from relay.store import Store, Writer


def secrets_in(db: Path) -> dict[str, bytes]:
    with contextlib.closing(sqlite3.connect(db)) as conn:
        return {name: bytes(value) for name, value in conn.execute("SELECT name, value FROM secrets")}


def test_jobs_of_one_turn_share_a_transaction_and_a_failing_one_undoes_only_itself(
        tmp_path: Path) -> None:
    db = tmp_path / "relay.db"

    def failing(store: Store) -> None:
        store.put_secret("half-done", b"x")
        raise ValueError("this job fails after writing")

    async def main() -> list[object]:
        writer = Writer(db)
        try:
            jobs = [writer.run(lambda s, i=i: s.put_secret(f"s{i}", b"v")) for i in range(20)]
            jobs.insert(10, writer.run(failing))
            return await asyncio.gather(*jobs, return_exceptions=True)
        finally:
            writer.close()

    results = asyncio.run(main())
    errors = [r for r in results if isinstance(r, BaseException)]
    assert [str(e) for e in errors] == ["this job fails after writing"]
    assert sorted(secrets_in(db)) == sorted(f"s{i}" for i in range(20))


def test_a_lock_held_elsewhere_is_waited_for_then_given_up_on(tmp_path: Path) -> None:
    db = tmp_path / "relay.db"

    async def main() -> None:
        writer = Writer(db)
        writer.BUSY_TIMEOUT = 0.5
        with contextlib.closing(sqlite3.connect(db, isolation_level=None)) as other:
            other.execute("BEGIN IMMEDIATE")
            ticks = 0

            async def tick() -> None:  # the loop goes on while the writer waits
                nonlocal ticks
                for _ in range(10_000):
                    await asyncio.sleep(0.01)
                    ticks += 1

            ticker = asyncio.create_task(tick())
            with pytest.raises(StorageUnavailable, match="locked"):
                await writer.run(lambda s: s.put_secret("early", b"x"))
            assert ticks > 0
            ticker.cancel()
            other.execute("ROLLBACK")
        # The lock is free again: the next job goes through.
        await writer.run(lambda s: s.put_secret("later", b"y"))
        writer.close()

    asyncio.run(main())
    assert secrets_in(db) == {"later": b"y"}


def test_a_job_waiting_for_the_lock_goes_through_once_it_is_free(tmp_path: Path) -> None:
    db = tmp_path / "relay.db"

    async def main() -> None:
        writer = Writer(db)
        with contextlib.closing(sqlite3.connect(db, isolation_level=None)) as other:
            other.execute("BEGIN IMMEDIATE")
            job = asyncio.create_task(writer.run(lambda s: s.put_secret("waited", b"z")))
            await asyncio.sleep(0.3)
            assert not job.done()
            other.execute("ROLLBACK")
        await job
        writer.close()

    asyncio.run(main())
    assert secrets_in(db) == {"waited": b"z"}


def test_closing_runs_what_is_still_queued(tmp_path: Path) -> None:
    db = tmp_path / "relay.db"

    async def main() -> asyncio.Future[None]:
        writer = Writer(db)
        job = asyncio.ensure_future(writer.run(lambda s: s.put_secret("queued", b"q")))
        await asyncio.sleep(0)  # the job is queued, its turn not yet run
        writer.close()
        await job
        return job

    job = asyncio.run(main())
    assert job.exception() is None
    assert secrets_in(db) == {"queued": b"q"}


def test_jobs_from_another_threads_loop_run_on_the_writers_own(tmp_path: Path) -> None:
    """The server's loop owns the connection; a job from another thread's loop (a CLI
    helper, a test) is handed over to it, never run beside its rounds."""
    import threading

    db = tmp_path / "relay.db"
    writer = Writer(db)
    started, stop = threading.Event(), threading.Event()
    served: list[int] = []

    async def serve() -> None:  # the home loop: a steady stream of jobs
        for n in range(100_000):
            await writer.run(lambda s, n=n: s.put_secret(f"home{n}", b"h"))
            served.append(n)
            started.set()
            if stop.is_set():
                return

    home = threading.Thread(target=asyncio.run, args=(serve(),))
    home.start()
    try:
        assert started.wait(30)

        async def other() -> None:
            await asyncio.gather(*(writer.run(lambda s, i=i: s.put_secret(f"other{i}", b"o"))
                                   for i in range(200)))

        asyncio.run(other())
    finally:
        stop.set()
        home.join(timeout=60)
    writer.close()
    names = secrets_in(db)
    assert {f"other{i}" for i in range(200)} <= set(names)
    assert len([n for n in names if n.startswith("home")]) == len(served)

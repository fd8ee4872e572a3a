"""SIGTERM during a burst of deliveries (issue 5): relay exits soon, cleanly, and
after a restart every accepted event is delivered.

``relay serve`` runs as a real process (``RelayProcess``) on a real SQLite file, in
front of a slow sink, so that when SIGTERM arrives webhooks are still arriving,
deliveries are queued and some are on the wire. relay must exit with code 0 (Docker
and systemd send SIGTERM, and SIGKILL 10 s later): the time it takes is measured and
printed, but only bounded generously here (60 s), so that a slow, busy machine does
not fail the test. After a restart on the same database, every (reference, ticket)
of every event that was answered 2xx must reach the sink: duplicates are allowed
(at-least-once, with the same Idempotency-Key), losses are not.
"""

from __future__ import annotations

import collections
import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from test_durability import (
    TICKETS,
    Load,
    complete,
    db_rows,
    delivered,
    event_body,
    quiet,
    relay_env,
    write_config,
)

from conftest import RelayProcess, Reply, Sink, free_port, sign, wait_until

pytestmark = pytest.mark.slow


def stop(relay: RelayProcess, timeout: float = 60.0) -> tuple[int | None, float]:
    """SIGTERM; (exit code, seconds until the process was gone). None: it had to be killed."""
    started = time.monotonic()
    relay.proc.send_signal(signal.SIGTERM)
    try:
        code: int | None = relay.proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        relay.proc.kill()
        relay.proc.wait(timeout=30)
        code = None
    seconds = time.monotonic() - started
    relay.log.close()
    return code, seconds


def test_sigterm_during_a_burst_exits_soon_and_loses_nothing(tmp_path: Path) -> None:
    sink = quiet(Sink())
    # A slow destination: deliveries pile up, and 16 at a time are on the wire.
    sink.default = Reply(delay=0.3)
    count = 200
    try:
        write_config(tmp_path, sink)
        env = relay_env(tmp_path)
        port = free_port()
        relay = RelayProcess(tmp_path, port, env)
        load = Load(relay.url, count, workers=8, deadline=150)
        try:
            load.wait_answered(60)
            answered_at_stop = load.answered
            code, seconds = stop(relay)
            left = db_rows(tmp_path / "relay.db",
                           "SELECT (SELECT COUNT(*) FROM events WHERE routed_at IS NULL) AS unrouted,"
                           " (SELECT COUNT(*) FROM deliveries WHERE status = 'pending') AS pending,"
                           " (SELECT COUNT(*) FROM deliveries WHERE status = 'sending') AS sending,"
                           " (SELECT COUNT(*) FROM deliveries WHERE status = 'delivered') AS delivered")[0]
            print(f"\nshutdown: SIGTERM after {answered_at_stop} of {count} webhooks answered; "
                  f"relay exited with {code} in {seconds:.2f} s, leaving {left}")
            log = b"".join(p.read_bytes() for p in tmp_path.glob("relay-*.log"))
            assert code == 0, f"relay exited with {code} on SIGTERM:\n{log.decode(errors='replace')[-3000:]}"
            assert b"Traceback" not in log, log.decode(errors="replace")[-3000:]
            assert b"Application shutdown complete" in log  # relay's own shutdown ran
            # SIGTERM landed mid-burst, with deliveries still to make
            assert answered_at_stop < count
            assert left["pending"] + left["sending"] + left["unrouted"] > 0, left

            # the load keeps re-sending what it could not post meanwhile, as a platform would
            relay = RelayProcess(tmp_path, port, env)
            load.finish()
            assert load.answered == count, f"only {load.answered} of {count} events were answered"
            wanted = {(ref, ticket) for ref in load.ok for ticket in TICKETS}
            wait_until(lambda: wanted <= set(delivered(sink)), timeout=120, interval=0.2)
        finally:
            load.close()
            if relay.proc.poll() is None:
                relay.terminate()
        assert relay.proc.returncode == 0

        got = delivered(sink)
        posted = {(f"DUR-{n:05d}", ticket) for n in range(count) for ticket in TICKETS}
        assert set(got) <= posted, f"delivered but never posted: {sorted(set(got) - posted)[:5]}"
        missing = wanted - set(got)
        assert not missing, f"{len(missing)} acknowledged deliveries lost, e.g. {sorted(missing)[:5]}"
        assert len(load.ok) == count, dict(load.statuses)
        # a repeated delivery is the same delivery: the receiver can drop it by its key
        keys: dict[tuple[str, int], set[str]] = collections.defaultdict(set)
        for r in complete(sink):
            body = r.json()
            keys[(body["reference"], body["ticket"])].add(r.headers["idempotency-key"])
        assert all(len(k) == 1 for k in keys.values()), \
            [item for item, k in keys.items() if len(k) > 1][:5]
        statuses = db_rows(tmp_path / "relay.db",
                           "SELECT status, COUNT(*) AS n FROM deliveries GROUP BY status")
        assert statuses == [{"status": "delivered", "n": count * len(TICKETS)}], statuses
        duplicates = sum(got.values()) - len(got)
        print(f"shutdown: after restart all {len(wanted)} deliveries of the {len(load.ok)} accepted "
              f"events arrived ({duplicates} duplicates, {load.transport_errors} webhooks re-sent "
              f"while relay was down); answers {dict(load.statuses)}")
    finally:
        sink.close()


def test_sigterm_is_bounded_when_a_request_and_a_delivery_hang(tmp_path: Path) -> None:
    """The worst case: a webhook still being uploaded, and a destination that does not
    answer. relay waits for neither for long (4 s for open requests, 3 s for deliveries
    on the wire, well under Docker's 10 s), exits 0, and the delivery it gave up on is
    sent after the restart."""
    sink = quiet(Sink())
    sink.default = Reply(delay=40)  # answers long after relay has stopped waiting
    try:
        write_config(tmp_path, sink)
        env = dict(relay_env(tmp_path), RELAY_DELIVERY_TIMEOUT="60")
        port = free_port()
        relay = RelayProcess(tmp_path, port, env)
        body = event_body(1)
        path, headers = sign("quicket", "quicket", body)
        slow_body = event_body(2)
        slow_path, _ = sign("quicket", "quicket", slow_body)
        with socket.create_connection(("127.0.0.1", port), timeout=30) as upload:
            try:
                answer = httpx.post(relay.url + path, content=body, headers=headers, timeout=30)
                assert answer.status_code == 200, answer.text
                # both deliveries of the event are on the wire, and the sink sits on them
                wait_until(lambda: sending(tmp_path) == len(TICKETS), timeout=30)
                # a webhook whose body is still arriving when SIGTERM comes
                upload.sendall(f"POST {slow_path} HTTP/1.1\r\nHost: relay\r\n"
                               f"Content-Type: application/json\r\nContent-Length: {len(slow_body)}"
                               "\r\n\r\n".encode() + slow_body[:10])
                time.sleep(0.5)
                code, seconds = stop(relay)
            finally:
                if relay.proc.poll() is None:
                    relay.terminate()
        print(f"\nshutdown, worst case: relay exited with {code} in {seconds:.2f} s")
        assert code == 0
        rows = db_rows(tmp_path / "relay.db", "SELECT status FROM deliveries")
        assert [r["status"] for r in rows] == ["sending"] * len(TICKETS), rows

        sink.default = Reply()
        before = len(sink.received)
        relay = RelayProcess(tmp_path, port, env)
        try:
            wait_until(lambda: {r.json()["ticket"] for r in complete(sink)[before:]} >= set(TICKETS),
                       timeout=60, interval=0.2)
        finally:
            relay.terminate()
        rows = db_rows(tmp_path / "relay.db", "SELECT status FROM deliveries")
        assert [r["status"] for r in rows] == ["delivered"] * len(TICKETS), rows
    finally:
        sink.close()


def sending(tmp: Path) -> int:
    rows = db_rows(tmp / "relay.db", "SELECT COUNT(*) AS n FROM deliveries WHERE status = 'sending'")
    return int(rows[0]["n"])

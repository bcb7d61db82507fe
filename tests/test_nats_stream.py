"""The ``nats-jetstream`` stream source against a real NATS JetStream server (127.0.0.1:4222, or
FALAJ_TEST_NATS_URL): order and acks, dead letters, redelivery and max_deliver, a consumer killed with
SIGKILL mid-stream and restarted (nothing lost), a NATS server killed and restarted under a running consumer,
and the errors of bad settings or an unreachable server. Each test uses its own streams and deletes them.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from falaj.core.errors import BackendError
from falaj.core.plugin import BackendConfig, StreamMessage, StreamSource, create_plugin_manager

NATS_URL = os.environ.get("FALAJ_TEST_NATS_URL", "nats://127.0.0.1:4222")
ROOT = Path(__file__).resolve().parents[1]


def _nats_problem(url: str = NATS_URL) -> str | None:
    parts = urlsplit(url)
    try:
        socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 4222), timeout=2).close()
    except OSError as exc:
        return f"NATS JetStream not reachable at {url}: {exc}"
    return None


needs_nats = pytest.mark.skipif(_nats_problem() is not None, reason=_nats_problem() or "")

nats = pytest.importorskip("nats", reason="nats-py is not installed (the 'nats' extra)")


# -- helpers: administration through nats-py, run synchronously ----------------------------------------------
def admin(work: Callable[[Any], Any], url: str = NATS_URL) -> Any:
    """Run ``await work(js)`` on a fresh connection and return its result."""

    async def main() -> Any:
        nc = await nats.connect(url, connect_timeout=2, allow_reconnect=False, max_reconnect_attempts=1)
        try:
            return await work(nc.jetstream(timeout=5))
        finally:
            await nc.close()

    return asyncio.run(main())


def publish(subject: str, payloads: Sequence[bytes], url: str = NATS_URL) -> None:
    async def work(js: Any) -> None:
        for start in range(0, len(payloads), 500):
            futures = [await js.publish_async(subject, p) for p in payloads[start : start + 500]]
            await asyncio.gather(*futures)

    admin(work, url)


def consumer_info(stream: str, name: str, url: str = NATS_URL) -> Any:
    async def work(js: Any) -> Any:
        return await js.consumer_info(stream, name)

    return admin(work, url)


def consumer_filter(n: Names) -> str | None:
    """The durable consumer's filter subject, or None while it does not exist."""
    from nats.js.errors import NotFoundError

    try:
        return str(consumer_info(n.stream, n.consumer).config.filter_subject)
    except NotFoundError:
        return None


def acked_all(n: Names) -> bool:
    """Whether the durable consumer exists and holds nothing delivered but unacknowledged, nor undelivered."""
    from nats.js.errors import NotFoundError

    try:
        info = consumer_info(n.stream, n.consumer)
    except NotFoundError:
        return False
    return bool(info.num_ack_pending == 0 and info.num_pending == 0)


def stored(stream: str) -> list[Any]:
    """Every message stored in ``stream`` (headers and data), in order."""

    async def work(js: Any) -> list[Any]:
        info = await js.stream_info(stream)
        if info.state.messages == 0:
            return []
        return [await js.get_msg(stream, seq) for seq in range(info.state.first_seq, info.state.last_seq + 1)]

    return list(admin(work))


@dataclass
class Names:
    stream: str
    subject: str
    dead_subject: str
    dead_stream: str
    consumer: str

    def subscription(self, **extra: Any) -> dict[str, Any]:
        return {
            "name": self.consumer,
            "subject": self.subject,
            "stream": self.stream,
            "dead_letter_subject": self.dead_subject,
            **extra,
        }


@pytest.fixture
def names() -> Iterator[Names]:
    """Unique stream, subject and consumer names; the streams are deleted afterwards."""
    if problem := _nats_problem():
        pytest.skip(problem)
    tag = secrets.token_hex(4)
    n = Names(
        stream=f"falaj_test_{tag}",
        subject=f"falaj.test.{tag}.rows",
        dead_subject=f"falaj.test.{tag}.dead",
        dead_stream=f"falaj_test_{tag}-dead-letter",
        consumer=f"view_{tag}",
    )
    yield n

    async def cleanup(js: Any) -> None:
        from nats.js.errors import NotFoundError

        for stream in (n.stream, n.dead_stream):
            with suppress(NotFoundError):
                await js.delete_stream(stream)

    admin(cleanup)


def make_streams(n: Names) -> None:
    """The consumed stream and its dead letter stream, file storage (as an operator would create them)."""

    async def work(js: Any) -> None:
        from nats.js.api import StorageType

        await js.add_stream(name=n.stream, subjects=[n.subject], storage=StorageType.FILE)
        await js.add_stream(name=n.dead_stream, subjects=[n.dead_subject], storage=StorageType.FILE)

    admin(work)


def make_source(tmp_path: Path, **settings: Any) -> StreamSource:
    from falaj.plugins.nats_stream.source import JetStreamSource

    settings.setdefault("url", NATS_URL)
    config = BackendConfig(
        name="stream",
        plugin="nats-jetstream",
        kind="stream_source",
        region="me-central-1",
        node_class="cpu",
        tenant="acme",
        home=tmp_path,
        settings=settings,
    )
    return JetStreamSource(config)


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


@dataclass
class Recorder:
    """A handler that records every message it sees; ``answer`` decides each message's answer."""

    answer: Callable[[StreamMessage], str | None] = lambda m: None
    seen: list[StreamMessage] = field(default_factory=list)
    written: dict[bytes, StreamMessage] = field(default_factory=dict)
    batches: list[int] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, batch: Sequence[StreamMessage]) -> list[str | None]:
        with self.lock:
            self.batches.append(len(batch))
            self.seen.extend(batch)
        answers = [self.answer(m) for m in batch]
        with self.lock:
            for m, a in zip(batch, answers, strict=True):
                if a is None:
                    self.written.setdefault(m.data, m)
        return answers


@contextmanager
def consuming(source: StreamSource, subscription: dict[str, Any], handler: Any) -> Iterator[threading.Event]:
    """Run ``consume`` in a thread; on exit set stop, and check it returned (re-raising what it raised)."""
    stop = threading.Event()
    failure: list[BaseException] = []

    def run() -> None:
        try:
            source.consume(subscription, handler, stop)
        except BaseException as exc:
            failure.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield stop
    finally:
        stop.set()
        thread.join(timeout=20)
    assert not thread.is_alive(), "consume did not return after stop was set"
    if failure:
        raise failure[0]


# -- registration -----------------------------------------------------------------------------------------------
def test_registered_through_the_stream_source_hook(tmp_path: Path, names: Names) -> None:
    registry = create_plugin_manager(builtins=["falaj.plugins.nats_stream"], load_entrypoints=False)
    spec = registry.backend_spec("stream_source", "nats-jetstream")
    assert spec is not None, registry.plugins
    assert spec.capabilities == frozenset({"streaming"})
    config = BackendConfig("s", "nats-jetstream", "stream_source", "me-central-1", "cpu", "acme", tmp_path)
    if NATS_URL == "nats://127.0.0.1:4222":
        assert isinstance(spec.factory(config), StreamSource)  # the default URL: the local server

    async def inside_an_event_loop() -> StreamSource:  # as from an async API handler: no nested asyncio.run
        return make_source(tmp_path)

    assert isinstance(asyncio.run(inside_an_event_loop()), StreamSource)


# -- (1) everything, in order, acknowledged ---------------------------------------------------------------------
@needs_nats
def test_every_message_reaches_the_handler_in_stream_order_and_is_acked(tmp_path: Path, names: Names) -> None:
    make_streams(names)
    payloads = [json.dumps({"event_id": f"e{i}"}).encode() for i in range(1000)]
    publish(names.subject, payloads)
    handler = Recorder()
    source = make_source(tmp_path)
    with consuming(source, names.subscription(batch=256), handler):
        wait_for(lambda: len(handler.seen) >= len(payloads), "every message to reach the handler")

    assert [m.data for m in handler.seen] == payloads  # stream order, each once
    assert [m.message_id for m in handler.seen] == [str(i) for i in range(1, 1001)]
    assert {m.delivery for m in handler.seen} == {1}
    assert {m.subject for m in handler.seen} == {names.subject}
    assert max(handler.batches) <= 256
    info = consumer_info(names.stream, names.consumer)
    assert info.num_ack_pending == 0 and info.num_pending == 0
    assert info.delivered.stream_seq == 1000 and info.ack_floor.stream_seq == 1000
    assert info.config.ack_policy == "explicit" and info.config.max_ack_pending == 1024
    assert stored(names.dead_stream) == []


@needs_nats
def test_stop_finishes_the_batch_in_hand_and_leaves_the_rest(tmp_path: Path, names: Names) -> None:
    make_streams(names)
    publish(names.subject, [f"m{i}".encode() for i in range(10)])
    stop_now: list[threading.Event] = []

    def handler(batch: Sequence[StreamMessage]) -> list[str | None]:
        stop_now[0].set()  # stop arrives while the batch is being written
        return [None] * len(batch)

    source = make_source(tmp_path)
    with consuming(source, names.subscription(batch=4), handler) as stop:
        stop_now.append(stop)
        wait_for(stop.is_set, "the first batch")
    info = consumer_info(names.stream, names.consumer)
    assert info.num_ack_pending == 0  # the batch in hand was acknowledged before consume returned
    assert info.ack_floor.stream_seq == 4 and info.num_pending == 6


# -- (2) dead letters -------------------------------------------------------------------------------------------
@needs_nats
def test_reasons_go_to_the_dead_letter_subject_and_the_stream_goes_on(tmp_path: Path, names: Names) -> None:
    from falaj.plugins.nats_stream.source import (
        DELIVERY_HEADER,
        REASON_HEADER,
        SEQUENCE_HEADER,
        STREAM_HEADER,
        SUBJECT_HEADER,
    )

    payloads = [b"bad-1" if i == 2 else b"bad-2" if i == 7 else f"ok-{i}".encode() for i in range(10)]

    def answer(m: StreamMessage) -> str | None:
        return "unknown entity key\r\nforged: header" if m.data.startswith(b"bad") else None

    handler = Recorder(answer=answer)
    source = make_source(tmp_path, create_stream=True)  # creates the stream and the dead letter stream
    with consuming(source, names.subscription(batch=4), handler):
        wait_for(lambda: consumer_filter(names) is not None, "the consumer to start")
        publish(names.subject, payloads)
        wait_for(lambda: len(handler.seen) >= 10, "every message")

    assert sorted(handler.written) == sorted(p for p in payloads if not p.startswith(b"bad"))
    dead = stored(names.dead_stream)
    assert [d.data for d in dead] == [b"bad-1", b"bad-2"]
    for d, seq in zip(dead, (3, 8), strict=True):
        assert d.headers[REASON_HEADER] == "unknown entity key forged: header"  # one line: no header injection
        assert "forged" not in d.headers
        assert d.headers[SUBJECT_HEADER] == names.subject
        assert d.headers[STREAM_HEADER] == names.stream
        assert d.headers[SEQUENCE_HEADER] == str(seq)
        assert d.headers[DELIVERY_HEADER] == "1"
    info = consumer_info(names.stream, names.consumer)
    assert info.num_ack_pending == 0 and info.num_pending == 0  # dead letters are acknowledged too


# -- (4) failures: redelivery, then max_deliver ---------------------------------------------------------------
@needs_nats
def test_a_raising_handler_gets_the_batch_again_and_then_succeeds(tmp_path: Path, names: Names) -> None:
    make_streams(names)
    publish(names.subject, [f"m{i}".encode() for i in range(6)])
    failures = {"left": 1}

    def answer(m: StreamMessage) -> str | None:
        if m.data == b"m3" and failures["left"]:
            failures["left"] -= 1
            raise ConnectionError("feature store unavailable")
        return None

    handler = Recorder(answer=answer)
    source = make_source(tmp_path, retry_delay=0.05)
    with consuming(source, names.subscription(batch=6, max_deliver=3), handler):
        wait_for(lambda: len(handler.written) == 6, "the batch to be written after its redelivery")

    deliveries = [m.delivery for m in handler.seen if m.data == b"m3"]
    assert deliveries == [1, 2]
    assert handler.written[b"m3"].delivery == 2
    info = consumer_info(names.stream, names.consumer)
    assert info.num_ack_pending == 0 and info.num_pending == 0
    assert stored(names.dead_stream) == []


@needs_nats
def test_a_message_failing_max_deliver_times_is_dead_lettered_with_the_last_error(tmp_path: Path, names: Names) -> None:
    from falaj.plugins.nats_stream.source import DELIVERY_HEADER, REASON_HEADER, SEQUENCE_HEADER

    make_streams(names)
    payloads = [f"m{i}".encode() for i in range(5)]
    publish(names.subject, payloads)
    attempts: dict[bytes, int] = {}

    def handler(batch: Sequence[StreamMessage]) -> list[str | None]:
        for m in batch:
            attempts[m.data] = attempts.get(m.data, 0) + 1
        if any(m.data == b"m2" for m in batch):  # the poison message fails any batch it is in
            raise ValueError(f"cannot decode row (attempt {attempts[b'm2']})")
        written.update(m.data for m in batch)
        return [None] * len(batch)

    written: set[bytes] = set()
    source = make_source(tmp_path, retry_delay=0.02, max_retry_delay=0.1)
    with consuming(source, names.subscription(batch=5, max_deliver=3), handler):
        wait_for(lambda: len(stored(names.dead_stream)) == 1 and len(written) == 4, "the poison's dead letter")

    assert written == set(payloads) - {b"m2"}  # the good rows of its batches were written, alone at the end
    (dead,) = stored(names.dead_stream)
    assert dead.data == b"m2"
    assert dead.headers[SEQUENCE_HEADER] == "3" and dead.headers[DELIVERY_HEADER] == "3"
    assert dead.headers[REASON_HEADER].startswith("handler failed on delivery 3 (max_deliver 3): ValueError:")
    assert "cannot decode row" in dead.headers[REASON_HEADER]
    info = consumer_info(names.stream, names.consumer)
    assert info.num_ack_pending == 0 and info.num_pending == 0


@needs_nats
def test_a_handler_answering_the_wrong_number_of_results_is_a_failure(tmp_path: Path, names: Names) -> None:
    make_streams(names)
    publish(names.subject, [b"a", b"b"])
    calls: list[int] = []

    def handler(batch: Sequence[StreamMessage]) -> list[str | None]:
        calls.append(len(batch))
        return [None]  # one answer, whatever the batch

    source = make_source(tmp_path, retry_delay=0.02)
    with consuming(source, names.subscription(batch=2, max_deliver=2), handler):
        wait_for(lambda: len(calls) >= 4 and acked_all(names), "the messages to be acknowledged")
    assert calls[:2] == [2, 2]  # refused twice as a batch, then each message alone succeeds
    assert stored(names.dead_stream) == []


# -- (3) THE KILL TEST --------------------------------------------------------------------------------------------
KILL_SCRIPT = textwrap.dedent(
    """
    import json, signal, sqlite3, sys, threading, time
    from pathlib import Path

    from falaj.core.plugin import BackendConfig
    from falaj.plugins.nats_stream.source import JetStreamSource

    args = json.loads(sys.argv[1])
    db = sqlite3.connect(args["db"], isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("CREATE TABLE IF NOT EXISTS events (event_id TEXT PRIMARY KEY, seq INTEGER)")
    db.execute("CREATE TABLE IF NOT EXISTS attempts (duplicates INTEGER, redelivered INTEGER)")
    if db.execute("SELECT count(*) FROM attempts").fetchone()[0] == 0:
        db.execute("INSERT INTO attempts VALUES (0, 0)")

    def handler(batch):
        db.execute("BEGIN IMMEDIATE")
        for m in batch:
            event_id = json.loads(m.data)["event_id"]
            inserted = db.execute(
                "INSERT OR IGNORE INTO events VALUES (?, ?)", (event_id, int(m.message_id))
            ).rowcount
            db.execute(
                "UPDATE attempts SET duplicates = duplicates + ?, redelivered = redelivered + ?",
                (1 - inserted, int(m.delivery > 1)),
            )
        db.execute("COMMIT")  # durable before the handler answers
        time.sleep(args["pause"])  # written, not yet acknowledged: where a kill hurts most
        return [None] * len(batch)

    config = BackendConfig(
        "stream", "nats-jetstream", "stream_source", "me-central-1", "cpu", "acme", Path(args["db"]).parent,
        settings={"url": args["url"], "ack_wait": args["ack_wait"]},
    )
    source = JetStreamSource(config)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    print("consuming", flush=True)
    source.consume(args["subscription"], handler, stop)
    print("stopped", flush=True)
    """
)


@needs_nats
def test_a_consumer_killed_mid_stream_and_restarted_loses_nothing(
    tmp_path: Path, names: Names, capsys: pytest.CaptureFixture[str]
) -> None:
    total = 2000
    make_streams(names)
    script = tmp_path / "consumer.py"
    script.write_text(KILL_SCRIPT)
    db_path = tmp_path / "events.db"

    def start(pause: float) -> subprocess.Popen[bytes]:
        args = {
            "db": str(db_path),
            "url": NATS_URL,
            "ack_wait": 2,
            "pause": pause,
            "subscription": names.subscription(batch=50),
        }
        return subprocess.Popen([sys.executable, str(script), json.dumps(args)], cwd=ROOT)

    def count() -> int:
        if not db_path.exists():
            return 0
        with sqlite3.connect(db_path, timeout=5) as db:
            try:
                return int(db.execute("SELECT count(*) FROM events").fetchone()[0])
            except sqlite3.OperationalError:  # the table is not created yet
                return 0

    publish(names.subject, [json.dumps({"event_id": f"evt-{i:05d}"}).encode() for i in range(total)])
    first = start(pause=0.03)
    try:
        wait_for(lambda: count() >= 400 or first.poll() is not None, "the first consumer to write some", 60)
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == -signal.SIGKILL
    written_before = count()
    assert 0 < written_before < total, "the kill must land mid-stream"

    second = start(pause=0.0)
    try:
        wait_for(lambda: count() >= total or second.poll() is not None, "every event after the restart", 60)
        wait_for(lambda: acked_all(names), "the last acks", 20)
        second.send_signal(signal.SIGTERM)
        assert second.wait(timeout=20) == 0
    finally:
        if second.poll() is None:
            second.kill()

    with sqlite3.connect(db_path) as db:
        ids = [row[0] for row in db.execute("SELECT event_id FROM events ORDER BY event_id")]
        duplicates, redelivered = db.execute("SELECT duplicates, redelivered FROM attempts").fetchone()
    assert ids == [f"evt-{i:05d}" for i in range(total)]  # exactly N distinct ids, none missing
    info = consumer_info(names.stream, names.consumer)
    assert info.num_ack_pending == 0 and info.num_pending == 0
    assert duplicates <= redelivered  # a duplicate attempt is only ever a redelivery
    with capsys.disabled():
        print(
            f"\nkill test: {written_before} of {total} written before SIGKILL; after the restart {redelivered}"
            f" redelivered messages, {duplicates} absorbed as duplicates by INSERT OR IGNORE"
        )


# -- NATS itself going away --------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


NATS_SERVER = shutil.which("nats-server") or shutil.which("nats-server", path="/usr/sbin:/usr/local/sbin")


@pytest.mark.skipif(NATS_SERVER is None, reason="the nats-server binary is not on PATH or in /usr/sbin")
def test_the_consumer_reconnects_after_the_server_restarts(tmp_path: Path) -> None:
    port = _free_port()
    url = f"nats://127.0.0.1:{port}"
    store = tmp_path / "jetstream"
    assert NATS_SERVER is not None
    command = [NATS_SERVER, "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", str(store)]

    def serve() -> subprocess.Popen[bytes]:
        server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: _nats_problem(url) is None, "nats-server to listen", 20)
        return server

    server = serve()
    try:
        n = Names("restart", "restart.rows", "restart.dead", "restart-dead-letter", "view")
        admin(lambda js: js.add_stream(name=n.stream, subjects=[n.subject, n.dead_subject]), url)
        handler = Recorder()
        source = make_source(tmp_path, url=url, max_reconnect_delay=0.5)
        with consuming(source, n.subscription(batch=10), handler):
            publish(n.subject, [f"before-{i}".encode() for i in range(30)], url)
            wait_for(lambda: len(handler.written) == 30, "the first messages")
            server.kill()
            server.wait(timeout=10)
            server = serve()

            def resend() -> bool:
                try:
                    publish(n.subject, [f"after-{i}".encode() for i in range(30)], url)
                    return True
                except Exception:  # JetStream is still recovering its store
                    return False

            wait_for(resend, "JetStream to take messages again", 20)
            wait_for(lambda: len(handler.written) == 60, "the messages sent after the restart", 30)
        assert {m.data for m in handler.written.values()} == {
            *(f"before-{i}".encode() for i in range(30)),
            *(f"after-{i}".encode() for i in range(30)),
        }
    finally:
        server.kill()
        server.wait(timeout=10)


# -- (5) bad settings and an unreachable server fail at construction -----------------------------------------
def test_an_unreachable_server_is_refused_at_construction(tmp_path: Path) -> None:
    port = _free_port()  # nothing listens there
    with pytest.raises(BackendError, match=rf"cannot reach NATS at nats://127\.0\.0\.1:{port}"):
        make_source(tmp_path, url=f"nats://127.0.0.1:{port}", connect_timeout=0.5)
    with pytest.raises(BackendError) as caught:
        make_source(tmp_path, url=f"nats://falaj:s3cret@127.0.0.1:{port}", connect_timeout=0.5)
    assert "s3cret" not in str(caught.value) and "falaj:***@127.0.0.1" in str(caught.value)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"url": "http://127.0.0.1:4222"}, "must use nats:// or tls://"),
        ({"url": "127.0.0.1:4222"}, "must use nats:// or tls://"),
        ({"url": "nats://"}, "names no host"),
        ({"url": "nats://127.0.0.1:99999"}, "port must be a number"),
        ({"url": "nats://127.0.0.1:4222/path?x=1"}, "must end after host:port"),
        ({"url": "nats://exa mple:4222"}, "spaces"),
        ({"url": 4222}, "must be a nats:// or tls:// URL"),
        ({"create_stream": "yes"}, "must be true or false"),
        ({"ack_wait": 0}, "'ack_wait' must be between"),
        ({"ack_wait": float("nan")}, "must be a number"),
        ({"max_ack_pending": 1.5}, "whole number"),
        ({"max_deliver": True}, "whole number"),
        ({"retry_delay": 5, "max_retry_delay": 1}, "must not be less than"),
        ({"urll": "nats://127.0.0.1:4222"}, "unknown setting"),
    ],
)
def test_bad_settings_are_refused_at_construction(tmp_path: Path, settings: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make_source(tmp_path, **settings)


@needs_nats
@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"name": None}, "missing name"),
        ({"stream": "a.b"}, "subscription 'stream' must be"),
        ({"subject": "rows..x"}, "empty token"),
        ({"subject": "rows.>.x"}, "'>' may only be the last token"),
        ({"dead_letter_subject": "dead.*"}, "must be a literal subject"),
        ({"batch": 0}, "'batch' must be between"),
        ({"batch": 2048}, "larger than the backend's max_ack_pending"),
        ({"max_deliver": 0}, "'max_deliver' must be between"),
    ],
)
def test_bad_subscriptions_are_refused(tmp_path: Path, names: Names, change: dict[str, Any], message: str) -> None:
    source = make_source(tmp_path)
    with pytest.raises(ValueError, match=message):
        source.consume({**names.subscription(), **change}, lambda batch: [None] * len(batch), threading.Event())


@needs_nats
def test_dead_letters_that_would_be_consumed_again_are_refused(tmp_path: Path, names: Names) -> None:
    source = make_source(tmp_path)
    sub = names.subscription(subject=f"{names.subject}.>", dead_letter_subject=f"{names.subject}.dead")
    with pytest.raises(ValueError, match="would be consumed again"):
        source.consume(sub, lambda batch: [None] * len(batch), threading.Event())


@needs_nats
def test_a_missing_stream_is_an_error_unless_creating_is_allowed(tmp_path: Path, names: Names) -> None:
    source = make_source(tmp_path)
    with pytest.raises(BackendError, match=rf"stream '{names.stream}' does not exist .* create_stream: true"):
        source.consume(names.subscription(), lambda batch: [None] * len(batch), threading.Event())

    admin(lambda js: js.add_stream(name=names.stream, subjects=[names.subject]))
    with pytest.raises(BackendError, match=r"no stream .* stores the dead letter subject"):
        source.consume(names.subscription(), lambda batch: [None] * len(batch), threading.Event())

    admin(lambda js: js.add_stream(name=names.dead_stream, subjects=[names.dead_subject]))
    elsewhere = names.subscription(subject=f"{names.subject}.other")  # a subject its stream does not store
    with pytest.raises(BackendError, match=f"refused durable consumer '{names.consumer}'.*not a valid subset"):
        source.consume(elsewhere, lambda batch: [None] * len(batch), threading.Event())


@needs_nats
def test_a_durable_name_taken_for_another_subject_is_refused(tmp_path: Path, names: Names) -> None:
    make_streams(names)
    source = make_source(tmp_path)
    with consuming(source, names.subscription(), lambda batch: [None] * len(batch)):
        wait_for(lambda: consumer_filter(names) is not None, "the durable consumer")
    assert consumer_filter(names) == names.subject

    admin(lambda js: js.update_stream(name=names.stream, subjects=[names.subject, f"{names.subject}2"]))
    with pytest.raises(BackendError, match=f"consumes '{names.subject}', not '{names.subject}2'"):
        source.consume(names.subscription(subject=f"{names.subject}2"), lambda b: [None] * len(b), threading.Event())

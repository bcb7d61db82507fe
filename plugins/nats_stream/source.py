"""A stream source on NATS JetStream: a durable pull consumer with explicit, synchronous acknowledgements.

One batch at a time: fetch up to ``batch`` messages, hand them to the handler (in a worker thread, while the
event loop keeps the connection alive and tells the server the batch is still being worked on), then settle
each message: acknowledged (and the acknowledgement confirmed by the server) when the handler wrote it; when
the handler gave a reason, published with that reason to the dead letter subject (JetStream confirms it is
stored) and then acknowledged. When the handler raises, nothing of the batch is acknowledged: the messages
are redelivered after a growing delay, and a message that keeps failing is dead-lettered with the last error
once it has been delivered ``max_deliver`` times.

The server keeps what was not acknowledged: a consumer that is killed loses nothing, its messages come back
after ``ack_wait`` to whichever consumer process binds the same durable name next.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

from falaj.core.errors import BackendError
from falaj.core.plugin import BackendConfig, StreamHandler, StreamMessage, StreamSource

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.aio.msg import Msg
    from nats.js import JetStreamContext

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Headers a dead letter carries beside the original message's own (``Nats-*`` headers are not copied).
REASON_HEADER = "Falaj-Dead-Letter-Reason"
SUBJECT_HEADER = "Falaj-Original-Subject"
STREAM_HEADER = "Falaj-Original-Stream"
SEQUENCE_HEADER = "Falaj-Stream-Sequence"
DELIVERY_HEADER = "Falaj-Delivery"
CONSUMER_HEADER = "Falaj-Consumer"

DEFAULT_URL = "nats://127.0.0.1:4222"
DEFAULT_BATCH = 256
DEFAULT_MAX_DELIVER = 10
MAX_BATCH = 10_000
_NAME = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
_FETCH_WAIT = 1.0  # seconds a fetch waits for messages: how soon ``stop`` is noticed when the stream is idle
_API_TIMEOUT = 5.0  # JetStream API calls, dead letter publishes, synchronous acks
_FIRST_RETRY = 0.5  # first reconnect delay; doubles up to ``max_reconnect_delay``
_MAX_REASON = 1024  # characters of a dead letter reason kept in its header


@dataclass(frozen=True, slots=True)
class JetStreamSettings:
    """The backend's settings (``BackendConfig.settings``). Durations are in seconds."""

    url: str = DEFAULT_URL  # nats:// or tls://, one server; credentials may be given in the URL
    create_stream: bool = False  # create a missing stream (and dead letter stream), file storage
    ack_wait: float = 30.0  # how long the server waits for an ack before redelivering (a crashed consumer's)
    max_ack_pending: int = 1024  # unacknowledged messages the server lets the durable consumer hold
    max_deliver: int = DEFAULT_MAX_DELIVER  # deliveries of a failing message before it is dead-lettered
    retry_delay: float = 2.0  # redelivery delay after the handler raised; doubles with each delivery
    max_retry_delay: float = 60.0
    connect_timeout: float = 2.0
    max_reconnect_delay: float = 30.0  # reconnect delay grows up to this while NATS is away

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any] | None) -> JetStreamSettings:
        """Settings from the backend's settings; an unknown key or a bad value raises ``ValueError``."""
        if values is None:
            return cls()
        if not isinstance(values, Mapping):
            raise ValueError("settings must be an object")
        known = {f.name for f in fields(cls)}
        unknown = sorted(str(k) for k in values if k not in known)
        if unknown:
            raise ValueError(f"unknown setting(s) {', '.join(map(repr, unknown))} (known: {', '.join(sorted(known))})")
        changes: dict[str, Any] = {}
        if "url" in values:
            changes["url"] = check_url(values["url"])
        if "create_stream" in values:
            if not isinstance(values["create_stream"], bool):
                raise ValueError(f"setting 'create_stream' must be true or false, not {values['create_stream']!r}")
            changes["create_stream"] = values["create_stream"]
        for key, low, high in (
            ("ack_wait", 1.0, 86_400.0),
            ("retry_delay", 0.0, 3_600.0),
            ("max_retry_delay", 0.0, 86_400.0),
            ("connect_timeout", 0.1, 60.0),
            ("max_reconnect_delay", 0.1, 3_600.0),
        ):
            if key in values:
                changes[key] = _number(values[key], f"setting {key!r}", low, high)
        for key, low, high_int in (("max_ack_pending", 1, 1_000_000), ("max_deliver", 1, 1_000)):
            if key in values:
                changes[key] = _integer(values[key], f"setting {key!r}", low, high_int)
        settings = cls(**changes)
        if settings.max_retry_delay < settings.retry_delay:
            raise ValueError("setting 'max_retry_delay' must not be less than 'retry_delay'")
        return settings


@dataclass(frozen=True, slots=True)
class Subscription:
    """What ``consume`` is asked to consume, validated (the mapping may carry other keys; they are ignored)."""

    name: str  # durable consumer name
    subject: str  # filter subject (wildcards allowed)
    stream: str
    dead_letter_subject: str
    batch: int = DEFAULT_BATCH
    max_deliver: int = DEFAULT_MAX_DELIVER

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], settings: JetStreamSettings) -> Subscription:
        if not isinstance(values, Mapping):
            raise ValueError("subscription must be an object with name, subject, stream and dead_letter_subject")
        missing = [k for k in ("name", "subject", "stream", "dead_letter_subject") if values.get(k) in (None, "")]
        if missing:
            raise ValueError(f"subscription is missing {', '.join(missing)}")
        name = _check_name(values["name"], "subscription 'name' (the durable consumer name)")
        stream = _check_name(values["stream"], "subscription 'stream'")
        subject = check_subject(values["subject"], "subscription 'subject'", wildcards=True)
        dead = check_subject(values["dead_letter_subject"], "subscription 'dead_letter_subject'", wildcards=False)
        if subject_matches(subject, dead):
            raise ValueError(
                f"dead letter subject {dead!r} is matched by the consumed subject {subject!r}: dead letters would"
                " be consumed again; choose a dead letter subject outside it"
            )
        batch = _integer(values.get("batch", DEFAULT_BATCH), "subscription 'batch'", 1, MAX_BATCH)
        if batch > settings.max_ack_pending:
            raise ValueError(
                f"subscription 'batch' ({batch}) is larger than the backend's max_ack_pending"
                f" ({settings.max_ack_pending}): lower the batch or raise max_ack_pending"
            )
        max_deliver = settings.max_deliver
        if values.get("max_deliver") is not None:
            max_deliver = _integer(values["max_deliver"], "subscription 'max_deliver'", 1, 1_000)
        return cls(name, subject, stream, dead, batch, max_deliver)


class JetStreamSource(StreamSource):
    """``nats-jetstream``: consumes a JetStream stream with a durable pull consumer, at least once."""

    def __init__(self, config: BackendConfig) -> None:
        self.config = config
        self.settings = JetStreamSettings.from_mapping(config.settings)
        self.url = self.settings.url
        _run_sync(self._probe)

    # -- the StreamSource interface ---------------------------------------------------------------------------
    def consume(self, subscription: Mapping[str, Any], handler: StreamHandler, stop: Any) -> None:
        sub = Subscription.from_mapping(subscription, self.settings)
        if not callable(handler):
            raise ValueError("handler must be callable: it takes a batch of StreamMessage and answers per message")
        if not callable(getattr(stop, "is_set", None)):
            raise ValueError("stop must be a threading.Event (anything with is_set())")
        consumer = _Consumer(self, sub, handler, stop)
        _run_sync(consumer.run)

    # -- connections ------------------------------------------------------------------------------------------
    @property
    def shown_url(self) -> str:
        """The URL with any password hidden, for messages and logs."""
        return redact(self.url)

    async def connect(self) -> Client:
        """One connection, no automatic reconnection (the consumer loop reconnects with backoff).

        Raises ``BackendError`` naming the URL and the last connection error when NATS does not answer.
        """
        import nats
        import nats.errors

        errors: list[BaseException] = []

        async def on_error(exc: Exception) -> None:
            errors.append(exc)
            log.debug("NATS at %s: %s: %s", self.shown_url, type(exc).__name__, exc)

        timeout = self.settings.connect_timeout
        options: dict[str, Any] = {
            "servers": [self.url],
            "name": f"falaj-stream-source:{self.config.tenant}:{self.config.name}",
            "connect_timeout": timeout,
            "allow_reconnect": False,
            "max_reconnect_attempts": 1,  # 0 would retry the first connection forever
            "reconnect_time_wait": 0.1,
            "ping_interval": 20,
            "max_outstanding_pings": 3,
            "error_cb": on_error,
        }
        try:
            nc = await asyncio.wait_for(nats.connect(**options), timeout=timeout + 0.5)
        except nats.errors.AuthorizationError as exc:
            raise BackendError(f"NATS at {self.shown_url} refused the credentials: {exc}") from exc
        except (TimeoutError, OSError, nats.errors.Error) as exc:
            cause = errors[-1] if errors else exc
            detail = str(cause) or type(cause).__name__
            raise BackendError(f"cannot reach NATS at {self.shown_url}: {detail}") from exc
        if urlsplit(self.url).scheme.lower() == "tls" and not getattr(nc, "_server_info", {}).get("tls_required"):
            await _close_quietly(nc)
            raise BackendError(
                f"NATS at {self.shown_url} does not use TLS but the URL asks for tls://: refusing a plaintext"
                " connection (configure TLS on the server, or use nats:// on a trusted network)"
            )
        return nc

    async def _probe(self) -> None:
        """Check at construction that NATS answers and has JetStream, so a bad backend is refused at once."""
        import nats.errors
        import nats.js.errors

        nc = await self.connect()
        try:
            await nc.jetstream(timeout=self.settings.connect_timeout).account_info()
        except (nats.errors.NoRespondersError, nats.js.errors.ServiceUnavailableError) as exc:
            raise BackendError(
                f"NATS at {self.shown_url} answers but JetStream is not enabled there (start nats-server with -js)"
            ) from exc
        except (TimeoutError, nats.errors.Error) as exc:
            raise BackendError(f"NATS at {self.shown_url} did not answer a JetStream request: {exc}") from exc
        finally:
            await _close_quietly(nc)


class _Disconnected(Exception):
    """The connection closed under the consumer loop; it reconnects."""


class _Consumer:
    """One ``consume`` call: the reconnect loop, the fetch loop and the settling of each batch."""

    def __init__(self, source: JetStreamSource, sub: Subscription, handler: StreamHandler, stop: Any) -> None:
        self.source = source
        self.settings = source.settings
        self.sub = sub
        self.handler = handler
        self.stop = stop

    async def run(self) -> None:
        import nats.errors

        retryable = (nats.errors.Error, OSError, TimeoutError, _Disconnected)
        delay = _FIRST_RETRY
        failing = False
        while not self.stop.is_set():
            nc: Client | None = None
            try:
                try:
                    nc = await self.source.connect()
                except BackendError as exc:  # unreachable: keep trying until stopped
                    raise _Disconnected(str(exc)) from exc
                js = nc.jetstream(timeout=_API_TIMEOUT)
                psub = await self._prepare(js)
                if failing:
                    log.warning("stream source %r: connected again to NATS at %s", self.sub.name, self.source.shown_url)
                failing, delay = False, _FIRST_RETRY
                await self._loop(nc, js, psub)
            except retryable as exc:
                failing = True
                log.warning(
                    "stream source %r: NATS at %s: %s: %s; retrying in %.1f s",
                    self.sub.name,
                    self.source.shown_url,
                    type(exc).__name__,
                    exc,
                    delay,
                )
                await self._pause(delay)
                delay = min(delay * 2, self.settings.max_reconnect_delay)
            finally:
                if nc is not None:
                    await _close_quietly(nc)

    async def _pause(self, seconds: float) -> None:
        """Sleep, waking early when ``stop`` is set."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while not self.stop.is_set() and loop.time() < deadline:
            await asyncio.sleep(min(0.05, max(0.0, deadline - loop.time())))

    # -- set-up -----------------------------------------------------------------------------------------------
    async def _prepare(self, js: JetStreamContext) -> JetStreamContext.PullSubscription:
        """The stream, the dead letter stream and the durable consumer, created where allowed and missing."""
        from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
        from nats.js.errors import BadRequestError, NotFoundError

        sub, url = self.sub, self.source.shown_url
        create = self.settings.create_stream
        try:
            await js.stream_info(sub.stream)
        except NotFoundError as exc:
            if not create:
                raise BackendError(
                    f"stream {sub.stream!r} does not exist on NATS at {url}: create it (subjects including"
                    f" {sub.subject!r}), or set create_stream: true in the backend's settings"
                ) from exc
            await _add_stream(js, sub.stream, sub.subject)
            log.info("stream source %r: created stream %r for %r", sub.name, sub.stream, sub.subject)
        try:
            await js.find_stream_name_by_subject(sub.dead_letter_subject)
        except NotFoundError as exc:
            if not create:
                raise BackendError(
                    f"no stream on NATS at {url} stores the dead letter subject {sub.dead_letter_subject!r}: dead"
                    " letters would be lost; create one, or set create_stream: true in the backend's settings"
                ) from exc
            name = f"{sub.stream}-dead-letter"
            await _add_stream(js, name, sub.dead_letter_subject)
            log.info("stream source %r: created dead letter stream %r", sub.name, name)

        wanted = ConsumerConfig(
            durable_name=sub.name,
            description="Falaj stream source",
            deliver_policy=DeliverPolicy.ALL,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=self.settings.ack_wait,
            max_ack_pending=self.settings.max_ack_pending,
            max_deliver=-1,  # the consumer bounds retries itself, so a failing message is dead-lettered, not dropped
            filter_subject=sub.subject,
        )
        try:
            existing = (await js.consumer_info(sub.stream, sub.name)).config
        except NotFoundError:
            existing = None
        if existing is not None:
            if existing.deliver_subject:
                raise BackendError(
                    f"consumer {sub.name!r} on stream {sub.stream!r} is a push consumer: use another durable name"
                )
            if (existing.filter_subject or "") != sub.subject:
                raise BackendError(
                    f"durable consumer {sub.name!r} on stream {sub.stream!r} consumes"
                    f" {existing.filter_subject or '(every subject)'!r}, not {sub.subject!r}: use another durable"
                    " name, or delete that consumer first"
                )
            if existing.ack_policy != AckPolicy.EXPLICIT:
                raise BackendError(
                    f"durable consumer {sub.name!r} on stream {sub.stream!r} does not use explicit acks:"
                    " use another durable name"
                )
        same = existing is not None and (
            existing.ack_wait == wanted.ack_wait
            and existing.max_ack_pending == wanted.max_ack_pending
            and existing.max_deliver in (None, -1)
        )
        if not same:
            try:
                await js.add_consumer(sub.stream, wanted)
            except BadRequestError as exc:
                raise BackendError(
                    f"NATS at {url} refused durable consumer {sub.name!r} on stream {sub.stream!r} for"
                    f" {sub.subject!r}: {exc.description or exc}"
                ) from exc
        return await js.pull_subscribe_bind(sub.name, stream=sub.stream)

    # -- the fetch loop ---------------------------------------------------------------------------------------
    async def _loop(self, nc: Client, js: JetStreamContext, psub: JetStreamContext.PullSubscription) -> None:
        import nats.errors

        while not self.stop.is_set():
            if nc.is_closed:
                raise _Disconnected("the connection closed")
            try:
                msgs = await psub.fetch(self.sub.batch, timeout=_FETCH_WAIT)
            except nats.errors.TimeoutError:
                continue  # nothing new (or the connection is gone: checked above)
            msgs = [m for m in msgs if m.reply]
            if msgs:
                await self._batch(js, msgs)

    async def _batch(self, js: JetStreamContext, msgs: list[Msg]) -> None:
        items = [_to_message(m) for m in msgs]
        try:
            answers = await self._call(msgs, items)
        except Exception as exc:
            await self._failed(js, msgs, items, exc)
            return
        await self._settle(js, msgs, answers)

    async def _call(self, msgs: Sequence[Msg], items: list[StreamMessage]) -> list[str | None]:
        """Run the handler in a thread; while it works, tell the server the batch is in progress."""
        work = asyncio.ensure_future(asyncio.to_thread(self.handler, items))
        interval = max(self.settings.ack_wait / 3, 0.2)
        while True:
            done, _ = await asyncio.wait({work}, timeout=interval)
            if done:
                return _check_answers(work.result(), len(items))
            await _each(lambda m: m.in_progress(), msgs)

    async def _failed(self, js: JetStreamContext, msgs: list[Msg], items: list[StreamMessage], exc: Exception) -> None:
        """The handler raised: redeliver later, or dead-letter what reached ``max_deliver``."""
        limit = self.sub.max_deliver
        last = [(m, item) for m, item in zip(msgs, items, strict=True) if item.delivery >= limit]
        again = [(m, item) for m, item in zip(msgs, items, strict=True) if item.delivery < limit]
        log.warning(
            "stream source %r: handler failed on a batch of %d (%s: %s): %d to be redelivered, %d at max_deliver",
            self.sub.name,
            len(msgs),
            type(exc).__name__,
            exc,
            len(again),
            len(last),
        )
        await _each(lambda pair: pair[0].nak(delay=self._retry_delay(pair[1].delivery)), again)
        if len(msgs) == 1 and last:
            await self._settle(js, msgs, [_failure_reason(exc, items[0].delivery, limit)])
            return
        # A batch failed as a whole: try each message at its last delivery alone, so only those that fail
        # alone are dead-lettered.
        for msg, item in last:
            try:
                answer = (await self._call([msg], [item]))[0]
            except Exception as alone:
                answer = _failure_reason(alone, item.delivery, limit)
            await self._settle(js, [msg], [answer])

    def _retry_delay(self, delivery: int) -> float:
        base = self.settings.retry_delay * 2 ** min(max(delivery - 1, 0), 30)
        return float(min(base, self.settings.max_retry_delay))

    async def _settle(self, js: JetStreamContext, msgs: Sequence[Msg], answers: Sequence[str | None]) -> None:
        """Dead-letter the messages with a reason (confirmed by JetStream), then ack them and the written ones."""
        done = [m for m, a in zip(msgs, answers, strict=True) if a is None]
        dead = [(m, a) for m, a in zip(msgs, answers, strict=True) if a is not None]
        if dead:
            outcomes = await asyncio.gather(*(self._dead_letter(js, m, a) for m, a in dead), return_exceptions=True)
            lost = []
            for (msg, reason), outcome in zip(dead, outcomes, strict=True):
                if isinstance(outcome, BaseException):
                    log.error(
                        "stream source %r: could not dead-letter message %s (%s) to %r: %s: %s; it will be redelivered",
                        self.sub.name,
                        msg.metadata.sequence.stream,
                        reason,
                        self.sub.dead_letter_subject,
                        type(outcome).__name__,
                        outcome,
                    )
                    lost.append(msg)
                else:
                    done.append(msg)
            await _each(lambda m: m.nak(delay=self._retry_delay(m.metadata.num_delivered or 1)), lost)
        failures = await _each(lambda m: m.ack_sync(timeout=_API_TIMEOUT), done)
        if failures:
            log.warning(
                "stream source %r: %d of %d acks were not confirmed (%s: %s); those messages will be redelivered",
                self.sub.name,
                len(failures),
                len(done),
                type(failures[0]).__name__,
                failures[0],
            )

    async def _dead_letter(self, js: JetStreamContext, msg: Msg, reason: str) -> None:
        meta = msg.metadata
        headers = {k: v for k, v in (msg.headers or {}).items() if not k.lower().startswith("nats-")}
        headers.update(
            {
                REASON_HEADER: _header_value(reason),
                SUBJECT_HEADER: msg.subject,
                STREAM_HEADER: meta.stream,
                SEQUENCE_HEADER: str(meta.sequence.stream),
                DELIVERY_HEADER: str(meta.num_delivered),
                CONSUMER_HEADER: meta.consumer,
                # Dead-lettering the same message twice (a crash before its ack) is stored once.
                "Nats-Msg-Id": f"falaj-dl:{meta.stream}:{meta.consumer}:{meta.sequence.stream}:"
                f"{int(meta.timestamp.timestamp() * 1_000_000)}",
            }
        )
        await js.publish(self.sub.dead_letter_subject, msg.data, timeout=_API_TIMEOUT, headers=headers)


# -- helpers ----------------------------------------------------------------------------------------------------
async def _add_stream(js: JetStreamContext, name: str, subject: str) -> None:
    """Create a stream (file storage) for ``subject``; a refusal (name or subjects taken) is a BackendError."""
    from nats.js.api import StorageType
    from nats.js.errors import BadRequestError

    try:
        await js.add_stream(name=name, subjects=[subject], storage=StorageType.FILE)
    except BadRequestError as exc:
        raise BackendError(f"NATS refused to create stream {name!r} for {subject!r}: {exc.description or exc}") from exc


def _to_message(msg: Msg) -> StreamMessage:
    meta = msg.metadata
    return StreamMessage(
        data=msg.data,
        subject=msg.subject,
        message_id=str(meta.sequence.stream),
        delivery=int(meta.num_delivered or 1),
    )


def _check_answers(answers: Any, count: int) -> list[str | None]:
    """The handler's answers, one per message: None or a reason (str). Anything else is a handler failure."""
    if isinstance(answers, str | bytes) or not isinstance(answers, Sequence):
        raise TypeError(f"handler returned {type(answers).__name__}, expected a sequence of None or reason strings")
    out = list(answers)
    if len(out) != count:
        raise ValueError(f"handler answered {len(out)} results for a batch of {count} messages")
    for answer in out:
        if answer is not None and not isinstance(answer, str):
            raise TypeError(f"handler answered {answer!r}: each answer must be None (written) or a reason string")
    return [a if a is None else (a or "no reason given") for a in out]


def _failure_reason(exc: BaseException, delivery: int, limit: int) -> str:
    return f"handler failed on delivery {delivery} (max_deliver {limit}): {type(exc).__name__}: {exc}"


def _header_value(text: str) -> str:
    """A header value: one line (no control characters), at most ``_MAX_REASON`` characters."""
    flat = " ".join("".join(c if c.isprintable() else " " for c in text).split())
    return flat[:_MAX_REASON] or "no reason given"


async def _each(action: Callable[[Any], Awaitable[Any]], items: Sequence[Any]) -> list[BaseException]:
    """Run ``action`` on every item concurrently; return the exceptions raised (none is raised here)."""
    if not items:
        return []
    outcomes = await asyncio.gather(*(action(item) for item in items), return_exceptions=True)
    return [o for o in outcomes if isinstance(o, BaseException)]


async def _close_quietly(nc: Client) -> None:
    try:
        await nc.close()
    except Exception:  # closing a broken connection: nothing more to do
        log.debug("closing the NATS connection failed", exc_info=True)


def _run_sync(factory: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine to completion from synchronous code (in a thread of its own inside an event loop)."""

    async def main() -> T:
        return await factory()

    def run() -> T:
        with asyncio.Runner(loop_factory=_new_loop) as runner:
            return runner.run(main())

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return run()
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="falaj-nats") as pool:
        return pool.submit(run).result()


def _new_loop() -> asyncio.AbstractEventLoop:
    """uvloop's event loop where it is installed (about twice the throughput), else asyncio's."""
    try:
        import uvloop  # type: ignore[import-not-found]
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def check_url(value: Any) -> str:
    """A ``nats://`` or ``tls://`` URL naming a host (and optionally a port and credentials), or ValueError."""
    example = "e.g. nats://127.0.0.1:4222"
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"setting 'url' must be a nats:// or tls:// URL ({example})")
    text = value.strip()
    if any(c.isspace() or not c.isprintable() for c in text):
        raise ValueError(f"setting 'url' {redact(text)!r} contains spaces or control characters ({example})")
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    if scheme not in ("nats", "tls") or not text.lower().startswith(f"{scheme}://"):
        raise ValueError(f"setting 'url' {redact(text)!r} must use nats:// or tls:// ({example})")
    if not parts.hostname:
        raise ValueError(f"setting 'url' {redact(text)!r} names no host ({example})")
    try:
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"setting 'url' {redact(text)!r}: the port must be a number from 1 to 65535") from exc
    if port == 0:
        raise ValueError(f"setting 'url' {redact(text)!r}: the port must be a number from 1 to 65535")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"setting 'url' {redact(text)!r} must end after host:port ({example})")
    return text


def redact(url: str) -> str:
    """``url`` with its password (or token) replaced by ``***``."""
    try:
        parts = urlsplit(url)
        if parts.username is None and parts.password is None:
            return url
        host = parts.netloc.rsplit("@", 1)[-1]
        user = "***" if parts.password is None else f"{parts.username}:***"
        return urlunsplit(parts._replace(netloc=f"{user}@{host}"))
    except ValueError:
        return "<unparseable URL>"


def check_subject(value: Any, what: str, *, wildcards: bool) -> str:
    """A NATS subject: dot-separated tokens, no spaces; ``*`` and a final ``>`` only where ``wildcards``."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"{what} must be a NATS subject such as 'features.orders'")
    if any(c.isspace() or not c.isprintable() for c in value):
        raise ValueError(f"{what} {value!r} must not contain spaces or control characters")
    tokens = value.split(".")
    for i, part in enumerate(tokens):
        if not part:
            raise ValueError(f"{what} {value!r} has an empty token (two dots, or a dot at an end)")
        if ("*" in part or ">" in part) and part not in ("*", ">"):
            raise ValueError(f"{what} {value!r}: '*' and '>' must be whole tokens")
        if part in ("*", ">") and not wildcards:
            raise ValueError(f"{what} {value!r} must be a literal subject, without '*' or '>'")
        if part == ">" and i != len(tokens) - 1:
            raise ValueError(f"{what} {value!r}: '>' may only be the last token")
    return value


def subject_matches(pattern: str, subject: str) -> bool:
    """Whether the literal ``subject`` is matched by ``pattern`` (NATS wildcards ``*`` and ``>``)."""
    want, have = pattern.split("."), subject.split(".")
    for i, part in enumerate(want):
        if part == ">":
            return len(have) > i
        if i >= len(have) or (part != "*" and part != have[i]):
            return False
    return len(want) == len(have)


def _check_name(value: Any, what: str) -> str:
    if not isinstance(value, str) or not _NAME.match(value):
        raise ValueError(f"{what} must be 1-128 letters, digits, '-' or '_' (got {value!r})")
    return value


def _number(value: Any, what: str, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{what} must be a number of seconds, not {value!r}")
    if not low <= value <= high:
        raise ValueError(f"{what} must be between {low:g} and {high:g} seconds, not {value!r}")
    return float(value)


def _integer(value: Any, what: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{what} must be a whole number, not {value!r}")
    if not low <= value <= high:
        raise ValueError(f"{what} must be between {low} and {high}, not {value}")
    return value

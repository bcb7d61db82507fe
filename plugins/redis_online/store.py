"""``RedisOnlineStore``: the online feature store in Redis.

Key layout (``P`` is the ``key_prefix`` setting, ``T`` the tenant):

* ``P:T:<table_id>:<key>`` — one string per entity key of a view version, ``<key>`` being the JSON array of
  the join key values (timestamps as microseconds since the epoch). The value is a 51-byte header — the
  (event_ts, created_ts) rank as 40 decimal digits, ``+`` and the subject id's length in bytes as 10 digits
  (``-0000000000`` without a subject) — then the subject id, then the JSON array
  ``[event_ts, created_ts, subject_id, *features]`` (timestamps in microseconds, NaN stored as null).
* ``P:T:subject:<subject_id>`` — a set of the entity keys (of every view of the tenant) that hold the subject,
  so erasure reads the set instead of scanning the keyspace.
* ``P:T:views`` — a hash of table id to view definition (``apply``).

Writes run a Lua script per chunk of keys (atomic in Redis): a key is overwritten only by a value of greater
rank, and the subject sets follow the value. A batch is all validated before the first chunk is sent; a
failure between chunks leaves earlier chunks written, which a retry of the same batch completes (writes are
idempotent). Reads are one ``MGET`` (one round trip) per call. The scripts touch the subject sets without
declaring them, so this store needs a standalone Redis (or one shard), not Redis Cluster.

Durability is the server's business: ``write`` returns when Redis has applied the batch; that it survives a
Redis restart depends on the server's persistence (``appendonly yes`` with ``appendfsync always`` or
``everysec``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import urlsplit, urlunsplit

import redis

from falaj.core.errors import BackendError
from falaj.core.plugin import BackendConfig, FeatureViewDef, OnlineFeatureStore, OnlineRow
from falaj.plugins.feature_store.online_sqlite import (
    UNKNOWN,
    check_storage_name,
    check_view,
    key_coercer,
    prepare_batch,
    row_decoder,
    select_features,
)

__all__ = ["DEFAULT_URL", "RedisOnlineStore"]

DEFAULT_URL = "redis://127.0.0.1:6379/0"
_PREFIX = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
#: Timestamps in microseconds are shifted by this so their rank is a non-negative 20-digit number.
_OFFSET = 2**63
#: Keys per write script call: each call holds Redis for about a millisecond.
_CHUNK = 1000
_ENCODE = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
_DECODE = json.JSONDecoder().raw_decode


def _int_key(key: tuple[Any, ...]) -> str:
    return f"[{key[0]}]"  # what _ENCODE writes for one int, faster


def key_encoder(view: FeatureViewDef) -> Callable[[tuple[Any, ...]], str]:
    """How a view's (coerced) key is written in Redis key names: the JSON array of its values."""
    return _int_key if [dtype for _, dtype in view.join_keys] == ["int64"] else _ENCODE


_LUA_SUBJECT = """
local function subject_of(value)
  if string.sub(value, 41, 41) ~= '+' then return nil end
  local length = tonumber(string.sub(value, 42, 51))
  return string.sub(value, 52, 51 + length)
end
"""

#: KEYS: entity keys; ARGV[1]: the subject set prefix, ARGV[1 + i]: the new value for KEYS[i].
_WRITE = (
    _LUA_SUBJECT
    + """
local function newer(a, b)
  for i = 1, 40, 10 do
    local x, y = tonumber(string.sub(a, i, i + 9)), tonumber(string.sub(b, i, i + 9))
    if x ~= y then return x > y end
  end
  return false
end
local prefix = ARGV[1]
local changed = 0
for i = 1, #KEYS do
  local key, value = KEYS[i], ARGV[i + 1]
  local old = redis.call('GET', key)
  if (not old) or newer(value, old) then
    local was = old and subject_of(old)
    local now = subject_of(value)
    if was and was ~= now then redis.call('SREM', prefix .. was, key) end
    redis.call('SET', key, value)
    if now and now ~= was then redis.call('SADD', prefix .. now, key) end
    changed = changed + 1
  end
end
return changed
"""
)

#: KEYS: subject sets; ARGV[i]: the subject id of KEYS[i]; ARGV[#KEYS + 1]: "1" to delete, "0" to count.
_SUBJECTS = (
    _LUA_SUBJECT
    + """
local erase = ARGV[#KEYS + 1] == '1'
local found = 0
for i = 1, #KEYS do
  for _, key in ipairs(redis.call('SMEMBERS', KEYS[i])) do
    local value = redis.call('GET', key)
    if value and subject_of(value) == ARGV[i] then
      found = found + 1
      if erase then redis.call('DEL', key) end
    end
  end
  if erase then redis.call('DEL', KEYS[i]) end
end
return found
"""
)


def _safe_url(url: str) -> str:
    """``url`` without its password, for messages."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        netloc = parts.netloc.rsplit("@", 1)[1]
        user = f"{parts.username}:***@" if parts.username else ":***@"
        return urlunsplit(parts._replace(netloc=user + netloc))
    except ValueError:
        return "<unparseable url>"


def _setting_number(settings: dict[str, Any], name: str, default: float, upper: float) -> float:
    value = settings.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= upper:
        raise ValueError(f"setting {name!r} must be a number of seconds between 0 and {upper:g}")
    return float(value)


@dataclass(frozen=True, slots=True)
class _ReadPlan:
    prefix: str
    encode: Callable[[tuple[Any, ...]], str]
    coerce: Callable[[Sequence[Sequence[Any]]], list[tuple[Any, ...]]]
    decode: Callable[[Sequence[Any]], OnlineRow]
    pick: tuple[int, ...] | None  # payload positions of the requested features, None for all


class RedisOnlineStore(OnlineFeatureStore):
    """The latest row per entity key of each view version, in Redis (see the module docs for the layout).

    Bound to ``config.tenant``. Safe to share between threads (redis-py's connection pool).
    """

    def __init__(self, config: BackendConfig) -> None:
        self.tenant = check_storage_name("tenant", config.tenant)
        settings = dict(config.settings or {})
        unknown = sorted(set(settings) - {"url", "key_prefix", "socket_timeout_s"})
        if unknown:
            raise ValueError(
                f"unknown setting(s) {', '.join(unknown)} for redis-online: it takes url, key_prefix, socket_timeout_s"
            )
        url = settings.get("url", DEFAULT_URL)
        if not isinstance(url, str) or urlsplit(url).scheme not in ("redis", "rediss"):
            shown = _safe_url(url) if isinstance(url, str) else repr(url)
            raise ValueError(f"setting 'url' must be a redis:// or rediss:// URL (e.g. {DEFAULT_URL}), got {shown}")
        prefix = settings.get("key_prefix", "falaj")
        if not isinstance(prefix, str) or not _PREFIX.match(prefix):
            raise ValueError(
                f"setting 'key_prefix' must be letters, digits, '.', '_' or '-' (at most 64 characters), got {prefix!r}"
            )
        timeout = _setting_number(settings, "socket_timeout_s", 5, 300)
        self.url = _safe_url(url)
        self.key_prefix = prefix
        self._base = f"{prefix}:{self.tenant}:"
        self._subjects = f"{self._base}subject:"
        self._views_key = f"{self._base}views"
        try:
            self._client = redis.Redis.from_url(
                url, socket_connect_timeout=min(timeout, 5.0), socket_timeout=timeout, decode_responses=False
            )
        except ValueError as exc:
            raise ValueError(f"setting 'url' is not a usable Redis URL ({self.url}): {exc}") from None
        try:
            self._client.ping()
        except redis.RedisError as exc:
            self._client.close()
            raise BackendError(f"cannot reach Redis at {self.url}: {exc}") from None
        self._write_script = self._client.register_script(_WRITE)
        self._subject_script = self._client.register_script(_SUBJECTS)
        self._applied: set[FeatureViewDef] = set()
        self._plans: dict[tuple[FeatureViewDef, tuple[str, ...] | None], _ReadPlan] = {}

    def close(self) -> None:
        self._client.close()

    def _call(self, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except redis.ConnectionError as exc:
            raise BackendError(f"cannot reach Redis at {self.url} ({what}): {exc}") from None
        except redis.RedisError as exc:
            raise BackendError(f"Redis at {self.url} failed to {what}: {exc}") from None

    # -- definitions -------------------------------------------------------------------------------------------
    def apply(self, view: FeatureViewDef) -> None:
        if view in self._applied:
            return
        check_view(view, self.tenant)
        definition = json.dumps({"join_keys": view.join_keys, "features": view.features}, separators=(",", ":"))
        client = self._client
        self._call("record the feature view", client.hsetnx, self._views_key, view.table_id, definition)
        held = self._call("read the feature view", client.hget, self._views_key, view.table_id)
        if held is not None and held.decode() != definition:
            raise ValueError(
                f"feature view {view.table_id!r} is already stored with other columns ({held.decode()}): a changed "
                "definition needs a new version"
            )
        self._applied.add(view)

    # -- writes ------------------------------------------------------------------------------------------------
    def write(self, view: FeatureViewDef, table: Any) -> int:
        self.apply(view)
        batch = prepare_batch(view, table)
        if not batch.rows:
            return 0
        base = f"{self._base}{view.table_id}:"
        encode_key = key_encoder(view)
        nkeys = len(view.join_keys)
        ets = nkeys + len(view.features)
        names: list[str] = []
        values: list[bytes] = []
        for key, row in zip(batch.keys, batch.rows, strict=True):
            names.append(base + encode_key(key))
            event, created, subject = row[ets], row[ets + 1], row[ets + 3]
            payload = _ENCODE([event, created, subject, *row[nkeys:ets]])
            rank = f"{event + _OFFSET:020d}{0 if created is None else created + _OFFSET + 1:020d}"
            if subject is None:
                values.append(f"{rank}-0000000000{payload}".encode())
            else:
                encoded = subject.encode()
                values.append(b"%s+%010d%s%s" % (rank.encode(), len(encoded), encoded, payload.encode()))
        changed = 0
        script = self._write_script
        for start in range(0, len(names), _CHUNK):
            chunk_keys = names[start : start + _CHUNK]
            chunk_args: list[Any] = [self._subjects, *values[start : start + _CHUNK]]
            changed += int(self._call("write feature rows", script, keys=chunk_keys, args=chunk_args))
        return changed

    # -- reads -------------------------------------------------------------------------------------------------
    def read(
        self, view: FeatureViewDef, keys: Sequence[tuple[Any, ...]], features: Sequence[str] | None = None
    ) -> list[OnlineRow]:
        plan = self._plans.get((view, None if features is None else tuple(features)))
        if plan is None:
            plan = self._plan(view, features)
        coerced = plan.coerce(keys)
        if not coerced:
            return []
        prefix, encode = plan.prefix, plan.encode
        names = [prefix + encode(key) for key in coerced]
        try:
            found = cast("list[bytes | None]", self._client.mget(names))
        except redis.RedisError as exc:
            raise BackendError(f"cannot read feature rows from Redis at {self.url}: {exc}") from None
        decode, pick, loads = plan.decode, plan.pick, _DECODE
        out: list[OnlineRow] = []
        for value in found:
            if value is None:
                out.append(UNKNOWN)
                continue
            start = 51 + int(value[41:51]) if value[40] == 43 else 51  # 43: '+'
            stored = loads(value[start:].decode())[0]
            if pick is not None:
                stored = [stored[0], stored[1], stored[2], *[stored[i] for i in pick]]
            out.append(decode(stored))
        return out

    def _plan(self, view: FeatureViewDef, features: Sequence[str] | None) -> _ReadPlan:
        self.apply(view)
        names = select_features(view, features)
        positions = {name: 3 + i for i, name in enumerate(view.feature_names)}
        pick = None if names == view.feature_names else tuple(positions[name] for name in names)
        plan = _ReadPlan(
            prefix=f"{self._base}{view.table_id}:",
            encode=key_encoder(view),
            coerce=key_coercer(view),
            decode=row_decoder(view, names),
            pick=pick,
        )
        if len(self._plans) > 4096:
            self._plans.clear()
        self._plans[(view, None if features is None else tuple(features))] = plan
        return plan

    # -- erasure -----------------------------------------------------------------------------------------------
    def _subject_keys(self, tenant: str, subject_ids: Iterable[str]) -> tuple[list[str], list[str]]:
        if tenant != self.tenant:
            raise ValueError(f"this store is bound to tenant {self.tenant!r}, not {tenant!r}")
        if isinstance(subject_ids, str):
            raise ValueError("subject_ids must be a list of subject ids, not one string")
        ids = list(dict.fromkeys(subject_ids))
        bad = [s for s in ids if not isinstance(s, str)]
        if bad:
            raise ValueError(f"subject ids must be strings, got {bad[0]!r}")
        return [self._subjects + s for s in ids], ids

    def delete_subjects(self, tenant: str, subject_ids: Iterable[str]) -> int:
        sets, ids = self._subject_keys(tenant, subject_ids)
        deleted = 0
        script = self._subject_script
        for start in range(0, len(ids), 100):
            keys, args = sets[start : start + 100], [*ids[start : start + 100], "1"]
            deleted += int(self._call("erase subjects", script, keys=keys, args=args))
        return deleted

    def count_subject(self, tenant: str, subject_id: str) -> int:
        sets, ids = self._subject_keys(tenant, [subject_id])
        script = self._subject_script
        return int(self._call("count a subject's rows", script, keys=sets, args=[*ids, "0"]))

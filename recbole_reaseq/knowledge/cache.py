"""Crash-safe, content-addressed, append-only cache of LLM answers (JSON Lines on disk).

Reference: ReaSeq (TaoRank Team, arXiv 2512.21257), Section 2.1.1. Multi-agent knowledge reasoning
issues one LLM request per (category, stream, batch), per (subcategory, stream) and per item; on a
public catalogue that is tens of thousands of paid, slow requests. Every answer is therefore stored
the moment it arrives, so that an interrupted run resumes where it stopped and a finished run is
replayed for free and bit-for-bit.

NOTE: the paper does not describe caching; this is an engineering addition.

Format: one record per line, UTF-8, ``\\n``-terminated::

    {"key":"<sha256 hex>","sha256":"<checksum>","value":<any JSON>}

``key`` is :func:`cache_key` (sha256 of backend, model, prompt version and full rendered prompt);
``sha256`` is the sha256 of the canonical JSON of ``{"key": key, "value": value}`` (sorted keys,
no spaces, UTF-8), so every line checks itself.

Durability: each record is written with a single ``os.write`` on an ``O_APPEND`` descriptor and
``os.fsync``-ed before :meth:`AnswerCache.put` returns. A ``kill -9`` can therefore only leave an
incomplete *last* line. On open, an incomplete or corrupt last line is dropped, the file is
truncated back to the last good record (with a logged warning) and the answer is simply asked
again; a corrupt line anywhere else means the file was damaged by something other than a crash and
raises :class:`CacheCorruptError` naming the file and line. An exclusive ``flock`` keeps two
writers from interleaving records (released by the kernel when a process dies).

Duplicate keys: the first record wins (``put`` of a known key writes nothing), so concurrent
identical requests cannot make the cache disagree with itself.
"""
from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import threading
from pathlib import Path
from typing import Any, Dict, Iterator, Optional, Union

try:  # POSIX only; without it the cache works but does not guard against a second writer.
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

__all__ = ["AnswerCache", "CacheCorruptError", "CacheLockedError", "cache_key", "canonical_json"]

logger = logging.getLogger(__name__)


class CacheCorruptError(ValueError):
    """A record before the last line of a cache file is unreadable or fails its checksum."""


class CacheLockedError(RuntimeError):
    """Another process (or another open handle) is writing the same cache file."""


def canonical_json(obj: Any) -> str:
    """Deterministic JSON: sorted keys, no whitespace, UTF-8 kept, NaN/Infinity refused."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False)


def cache_key(backend: str, model: str, prompt_version: str, prompt: str) -> str:
    """Content address of one request: sha256 of (backend, model, prompt version, rendered prompt)."""
    payload = canonical_json(["reaseq-makr-cache/1", backend, model, prompt_version, prompt])
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def _checksum(key: str, value: Any) -> str:
    return hashlib.sha256(canonical_json({"key": key, "value": value}).encode("utf-8")).hexdigest()


def encode_record(key: str, value: Any) -> bytes:
    """One cache line (with trailing newline) for ``key`` -> ``value``."""
    line = canonical_json({"key": key, "sha256": _checksum(key, value), "value": value})
    return (line + "\n").encode("utf-8")


def decode_record(line: bytes) -> Optional[tuple]:
    """``(key, value)`` of a well-formed line (without newline), else ``None``."""
    try:
        record = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    if not isinstance(record, dict) or set(record) != {"key", "sha256", "value"}:
        return None
    key, value = record["key"], record["value"]
    if not isinstance(key, str):
        return None
    try:
        if _checksum(key, value) != record["sha256"]:
            return None
    except ValueError:  # NaN / Infinity smuggled in
        return None
    return key, value


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(str(path), os.O_RDONLY)
    except OSError:  # pragma: no cover  (e.g. platforms without directory descriptors)
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


class AnswerCache:
    """Append-only JSON Lines cache; see the module docstring for the format and guarantees.

    Usage::

        with AnswerCache("runs/makr/answers.jsonl") as cache:
            if key not in cache:
                cache.put(key, {"answer": ...})
            value = cache.get(key)

    Thread-safe. One open handle per file at a time (:class:`CacheLockedError` otherwise).
    """

    def __init__(self, path: Union[str, os.PathLike]):
        self.path = Path(path)
        self._lock = threading.Lock()
        self._data: Dict[str, Any] = {}
        self._fd: Optional[int] = None
        self.dropped_tail_bytes = 0  # bytes cut from an incomplete last line at open (0 if none)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        existed = self.path.exists()
        fd = os.open(str(self.path), os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            if fcntl is not None:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    raise CacheLockedError(
                        f"cache file {self.path} is already open for writing (by another process "
                        f"or another AnswerCache in this one). Fix: close the other handle, or "
                        f"give this run its own cache file.") from None
            self._load(fd)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        if not existed:
            _fsync_dir(self.path.parent)

    # ------------------------------------------------------------------ loading
    def _load(self, fd: int) -> None:
        size = os.fstat(fd).st_size
        chunks = []
        offset = 0
        while offset < size:
            chunk = os.pread(fd, min(1 << 24, size - offset), offset)
            if not chunk:
                break
            chunks.append(chunk)
            offset += len(chunk)
        data = b"".join(chunks)
        lines = data.split(b"\n")
        tail = lines.pop()  # b"" when the file ends with a newline, else an incomplete line
        good_end = 0  # byte offset just after the last good record
        pos = 0
        for number, line in enumerate(lines, start=1):
            decoded = decode_record(line)
            end = pos + len(line) + 1
            if decoded is None:
                if number == len(lines) and not tail:
                    logger.warning("cache %s: last line %d is corrupt (%d bytes; interrupted "
                                   "write?); dropping it and truncating the file", self.path,
                                   number, len(line))
                    break
                raise CacheCorruptError(
                    f"cache file {self.path}, line {number} of {len(lines) + (1 if tail else 0)}: "
                    f"record is not valid JSON or fails its sha256 checksum. Only the last line "
                    f"can be damaged by an interrupted write, so this file was modified or "
                    f"damaged otherwise. Fix: restore it from a backup or delete it (its answers "
                    f"will be requested again).")
            key, value = decoded
            self._data.setdefault(key, value)
            good_end = end
            pos = end
        else:
            if tail:
                logger.warning("cache %s: incomplete last line (%d bytes without newline; "
                               "interrupted write?); dropping it and truncating the file",
                               self.path, len(tail))
        if good_end != size:
            self.dropped_tail_bytes = size - good_end
            os.ftruncate(fd, good_end)
            os.fsync(fd)

    # ------------------------------------------------------------------ mapping API
    def __contains__(self, key: object) -> bool:
        return key in self._data

    def __len__(self) -> int:
        return len(self._data)

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._data))

    def keys(self) -> list:
        """Keys in file order."""
        return list(self._data)

    def get(self, key: str, default: Any = None) -> Any:
        """A deep copy of the value stored under ``key`` (``default`` if absent)."""
        if key not in self._data:
            return default
        return copy.deepcopy(self._data[key])

    def put(self, key: str, value: Any) -> bool:
        """Append ``key -> value`` durably (write + fsync). Returns ``False`` if ``key`` was
        already present (nothing is written: first record wins)."""
        if not isinstance(key, str) or not key:
            raise TypeError(f"cache key must be a non-empty str, got {type(key).__name__}")
        try:
            record = encode_record(key, value)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"cache value for key {key[:16]}... is not JSON-serialisable "
                             f"({exc}). Fix: store only dicts/lists/str/numbers/bool/None.") from None
        with self._lock:
            if self._fd is None:
                raise ValueError(f"cache {self.path} is closed")
            if key in self._data:
                return False
            view = memoryview(record)
            while view:
                written = os.write(self._fd, view)
                view = view[written:]
            os.fsync(self._fd)
            self._data[key] = json.loads(canonical_json(value))
        return True

    # ------------------------------------------------------------------ lifetime
    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)  # also releases the flock
                self._fd = None

    @property
    def closed(self) -> bool:
        return self._fd is None

    def __enter__(self) -> "AnswerCache":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:  # pragma: no cover  (best effort)
        try:
            self.close()
        except Exception:
            pass

    def __repr__(self) -> str:
        return f"AnswerCache({str(self.path)!r}, records={len(self._data)})"

"""Tests of the crash-safe JSON Lines answer cache (recbole_reaseq/knowledge/cache.py)."""
from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from recbole_reaseq.knowledge.cache import (AnswerCache, CacheCorruptError, CacheLockedError,
                                            cache_key, encode_record)

ROOT = Path(__file__).resolve().parents[2]

# Shared by the in-process reference run and the subprocess that gets killed.
RECORD_SRC = '''
def record(i):
    key = "k%06d" % i
    value = {"i": i, "text": "r\\u00e9ponse-%d " % i + "x" * (500 + (i * 7919) % 20000),
             "nested": {"list": [i, i * 0.5, None, True]}}
    return key, value
'''
_ns: dict = {}
exec(RECORD_SRC, _ns)
record = _ns["record"]


def write_reference(path: Path, n: int) -> bytes:
    with AnswerCache(path) as cache:
        for i in range(n):
            cache.put(*record(i))
    return path.read_bytes()


def test_cache_key_is_sha256_of_its_four_parts():
    payload = json.dumps(["reaseq-makr-cache/1", "openai", "gpt-x", "l3_item.v1", "Prompt é"],
                         sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert cache_key("openai", "gpt-x", "l3_item.v1", "Prompt é") == \
        hashlib.sha256(payload.encode("utf-8")).hexdigest()
    base = cache_key("openai", "gpt-x", "v1", "p")
    assert len({base, cache_key("offline", "gpt-x", "v1", "p"), cache_key("openai", "gpt-y", "v1", "p"),
                cache_key("openai", "gpt-x", "v2", "p"), cache_key("openai", "gpt-x", "v1", "p ")}) == 5


def test_roundtrip_and_first_record_wins(tmp_path):
    path = tmp_path / "sub" / "answers.jsonl"
    values = {"a": {"answer": {"x": [1, 2.5, None]}, "model": "m"}, "b": "plain é", "c": [True, {}]}
    with AnswerCache(path) as cache:
        for k, v in values.items():
            assert cache.put(k, v) is True
        assert cache.put("a", {"other": 1}) is False  # append-only: the first record wins
        assert len(cache) == 3 and "b" in cache and "zz" not in cache
        got = cache.get("a")
        got["answer"]["x"].append(99)  # a copy: the cache is not mutated
        assert cache.get("a") == values["a"]
        assert cache.get("zz", "default") == "default"
    lines = path.read_bytes().split(b"\n")
    assert lines[-1] == b"" and len(lines) == 4
    first = json.loads(lines[0])
    assert sorted(first) == ["key", "sha256", "value"] and first["key"] == "a"
    assert lines[0] + b"\n" == encode_record("a", values["a"])
    with AnswerCache(path) as again:
        assert len(again) == 3 and again.keys() == ["a", "b", "c"]
        assert {k: again.get(k) for k in values} == values
        assert again.dropped_tail_bytes == 0


def test_second_writer_is_refused(tmp_path):
    path = tmp_path / "a.jsonl"
    with AnswerCache(path):
        with pytest.raises(CacheLockedError, match="already open"):
            AnswerCache(path)
    AnswerCache(path).close()  # released on close


def test_partial_last_line_is_dropped_and_truncated(tmp_path, caplog):
    path = tmp_path / "a.jsonl"
    good = write_reference(path, 2)
    half = encode_record(*record(2))
    with open(path, "ab") as fh:
        fh.write(half[: len(half) // 2])
    assert path.stat().st_size == len(good) + len(half) // 2
    with caplog.at_level(logging.WARNING, logger="recbole_reaseq.knowledge.cache"):
        cache = AnswerCache(path)
    assert "incomplete last line" in caplog.text and str(path) in caplog.text
    assert len(cache) == 2 and record(2)[0] not in cache
    assert cache.dropped_tail_bytes == len(half) // 2
    assert path.read_bytes() == good  # truncated back to the last good record
    cache.put(*record(2))
    cache.close()
    assert path.read_bytes() == write_reference(tmp_path / "ref.jsonl", 3)


def test_complete_but_corrupt_last_line_is_dropped(tmp_path, caplog):
    path = tmp_path / "a.jsonl"
    good = write_reference(path, 2)
    bad = encode_record(*record(2)).replace(b'"i":2', b'"i":3')  # checksum no longer matches
    with open(path, "ab") as fh:
        fh.write(bad)
    with caplog.at_level(logging.WARNING, logger="recbole_reaseq.knowledge.cache"):
        with AnswerCache(path) as cache:
            assert len(cache) == 2
    assert "last line 3 is corrupt" in caplog.text
    assert path.read_bytes() == good


def test_corrupt_middle_line_raises_naming_file_and_line(tmp_path):
    path = tmp_path / "a.jsonl"
    data = write_reference(path, 3)
    lines = data.split(b"\n")
    lines[1] = lines[1].replace(b'"i":1', b'"i":7')
    path.write_bytes(b"\n".join(lines))
    with pytest.raises(CacheCorruptError) as err:
        AnswerCache(path)
    assert str(path) in str(err.value) and "line 2 of 3" in str(err.value)
    assert path.read_bytes() == b"\n".join(lines)  # nothing was truncated
    AnswerCache(path.with_name("other.jsonl")).close()  # and the lock was released
    path.write_bytes(data[:10] + b"\n" + data)  # garbage first line, then good ones
    with pytest.raises(CacheCorruptError, match="line 1 of 4"):
        AnswerCache(path)


def test_survives_kill_9_and_resume_matches_uninterrupted_run(tmp_path):
    path = tmp_path / "killed.jsonl"
    child = f"""
import sys
sys.path.insert(0, {str(ROOT)!r})
from recbole_reaseq.knowledge.cache import AnswerCache
{RECORD_SRC}
cache = AnswerCache({str(path)!r})
for i in range(10 ** 6):
    cache.put(*record(i))
    print(i, flush=True)
"""
    proc = subprocess.Popen([sys.executable, "-c", child], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd=str(ROOT))
    acked = -1
    deadline = time.monotonic() + 30
    try:
        while acked < 40 and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            acked = int(line)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=10)
        proc.stdout.close()
        stderr = proc.stderr.read().decode()
        proc.stderr.close()
    assert acked >= 40, f"child wrote too little before the kill: {stderr}"
    assert proc.returncode == -signal.SIGKILL

    size_before = path.stat().st_size
    with AnswerCache(path) as cache:
        n = len(cache)
        assert n >= acked + 1  # every acknowledged (fsynced) record survived
        assert cache.keys() == [record(i)[0] for i in range(n)]  # a prefix, in order
        assert all(cache.get(record(i)[0]) == record(i)[1] for i in range(n))
        assert path.stat().st_size == size_before - cache.dropped_tail_bytes
        total = n + 25
        for i in range(total):  # resume: skip what is there, write the rest
            key, value = record(i)
            if key not in cache:
                cache.put(key, value)
    assert path.read_bytes() == write_reference(tmp_path / "reference.jsonl", total)

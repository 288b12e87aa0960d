"""Kill -9 of a real ``build`` subprocess mid-run, then resume (recbole_reaseq/knowledge/pipeline.py,
backends.py, cache.py): no lost answers, no duplicate backend calls, and final artefacts that are
byte-identical to an uninterrupted run's.

The killed child runs the production path ``pipeline.build(dataset)`` (default ``"offline"``
backend, cache at ``<knowledge>/llm_cache.jsonl``) with ``OfflineBackend._answer`` slowed down by
a sleep; backend name, model and hence cache keys and answers are those of the plain backend.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from recbole_reaseq.knowledge import pipeline as P
from recbole_reaseq.knowledge.backends import OfflineBackend
from tests.conftest import write_atomic_dataset
from recbole_reaseq.knowledge.cache import AnswerCache, decode_record

ROOT = Path(__file__).resolve().parents[2]
DATASET = "tinykill"
BATCH_SIZE = 6  # several Layer-1 batches per category: later prompts carry earlier answers
SLEEP_S = 0.05  # per backend request in the child
KILL_FRACTION = 0.35  # kill once this share of all answers is in the child's cache
OUTPUTS = ("taxonomy.json", "refined.json", "knowledge.jsonl", "texts.jsonl")
VOLATILE = ("created", "timings", "usage", "llm_cache")  # manifest fields allowed to differ

# (category path, brand, title stems); each stem becomes a few items with varying details
CATALOGUE = [
    ("Beauty Skin_Care Face", "Olay", ["Anti-Aging Moisturizing Cream", "Hydrating Face Serum",
                                       "Gentle Foaming Cleanser", "Oil-Free Moisturizer SPF 30"]),
    ("Beauty Skin_Care Body", "Nivea", ["Shea Butter Body Lotion", "Exfoliating Body Scrub"]),
    ("Beauty Makeup Eyes", "Maybelline", ["Waterproof Mascara, Blackest Black",
                                          "Liquid Eyeliner", "Eyeshadow Palette, Nude"]),
    ("Beauty Makeup Lips", "Revlon", ["Matte Lipstick, Red", "Moisturizing Lip Balm"]),
    ("Beauty Makeup Nails", "OPI", ["Nail Lacquer, Pink", "Quick Dry Top Coat"]),
    ("Beauty Hair_Care Shampoos", "Pantene", ["Repair Shampoo for Dry Hair",
                                              "Volumizing Shampoo"]),
    ("Beauty Hair_Care Conditioners", "Dove", ["Deep Conditioner, Coconut"]),
]
SIZES = ["1.7 oz", "8 fl. oz", "Travel Size 2 oz"]


def item_rows():
    rows, n = [], 0
    for cats, brand, stems in CATALOGUE:
        for stem in stems:
            for k, size in enumerate(SIZES[:2 if len(stems) > 2 else 3]):
                n += 1
                price = "" if n % 7 == 0 else f"{4.99 + 1.5 * n:.2f}"
                rows.append((f"b{n:03d}", f"{brand} {stem} {size}", cats,
                             brand if n % 11 else "", price))
    return rows


def write_dataset(root: Path) -> Path:
    rows = item_rows()
    # every item is interacted with (else it is skipped)
    inter = [(f"u{i % 9}", row[0], 1000 + i) for i, row in enumerate(rows)]
    return write_atomic_dataset(root, DATASET, rows, inter)


def read_lines(path: Path):
    """``(complete lines, incomplete tail)`` of a cache file as bytes."""
    data = path.read_bytes()
    *lines, tail = data.split(b"\n")
    return lines, tail


def manifest_core(root: Path) -> dict:
    manifest = json.loads((root / "manifest.build.json").read_text(encoding="utf-8"))
    assert Path(manifest["llm_cache"]) == root / "llm_cache.jsonl"
    return {k: v for k, v in manifest.items() if k not in VOLATILE}


def test_build_killed_mid_run_resumes_without_loss_or_duplicates(tmp_path, monkeypatch):
    data = write_dataset(tmp_path / "data")
    common = {"data_path": str(data), "batch_size": BATCH_SIZE}

    # ---- reference: one uninterrupted build into A
    art_a = tmp_path / "A"
    ref = P.build(DATASET, artifact_dir=str(art_a), **common)
    root_a = art_a / DATASET / "knowledge"
    total = ref["usage"]["requests"]
    assert ref["status"] == "built" and ref["usage"]["cache_hits"] == 0
    assert ref["usage"]["failures"] == 0 and ref["counts"]["items"] == len(item_rows())
    assert total >= 60, total  # enough requests for a kill in the middle
    assert len(read_lines(root_a / "llm_cache.jsonl")[0]) == total  # every prompt distinct
    ref_bytes = {name: (root_a / name).read_bytes() for name in OUTPUTS}

    # ---- a real subprocess builds into B with a slow backend; kill -9 it mid-run
    art_b = tmp_path / "B"
    root_b = art_b / DATASET / "knowledge"
    cache_b = root_b / "llm_cache.jsonl"
    child = f"""
import sys, time
sys.path.insert(0, {str(ROOT)!r})
from recbole_reaseq.knowledge import pipeline as P
from recbole_reaseq.knowledge.backends import OfflineBackend
plain = OfflineBackend._answer
def slow(self, request):
    time.sleep({SLEEP_S!r})
    return plain(self, request)
OfflineBackend._answer = slow  # same name/model/cache keys/answers, only slower
P.build({DATASET!r}, data_path={str(data)!r}, artifact_dir={str(art_b)!r},
        batch_size={BATCH_SIZE!r})
print("BUILD FINISHED", flush=True)
"""
    want = max(1, int(total * KILL_FRACTION))
    proc = subprocess.Popen([sys.executable, "-c", child], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd=str(tmp_path))
    seen, finished_early = 0, False
    deadline = time.monotonic() + 120  # generous: child start-up on a loaded machine
    try:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                finished_early = True
                break
            if cache_b.is_file():
                seen = cache_b.read_bytes().count(b"\n")
                if seen >= want:
                    break
            time.sleep(0.005)
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)
        out = proc.stdout.read().decode(errors="replace")
        err = proc.stderr.read().decode(errors="replace")
        proc.stdout.close()
        proc.stderr.close()
    assert not finished_early, (
        f"the child exited (rc={proc.returncode}) before it could be killed after {seen} of "
        f"{total} answers: the slowdown ({SLEEP_S}s/request) is too small for this machine or the "
        f"child failed.\nstdout: {out}\nstderr: {err[-3000:]}")
    assert seen >= want, f"child wrote only {seen}/{want} answers in 120 s.\nstderr: {err[-3000:]}"
    assert proc.returncode == -signal.SIGKILL, (proc.returncode, err[-3000:])
    assert "BUILD FINISHED" not in out

    # ---- the kill happened mid-run: no manifest, no outputs, part of the answers cached
    assert not (root_b / "manifest.build.json").exists()
    assert not any((root_b / name).exists() for name in OUTPUTS)
    lines, tail = read_lines(cache_b)
    assert want <= len(lines) < total, (len(lines), total)
    decoded = [decode_record(line) for line in lines]
    assert all(d is not None for d in decoded), "a complete (newline-terminated) record is corrupt"
    before = [key for key, _ in decoded]
    assert len(set(before)) == len(before)
    ref_lines = read_lines(root_a / "llm_cache.jsonl")[0]
    assert lines == ref_lines[:len(lines)], "killed cache is not a prefix of the reference cache"
    with AnswerCache(cache_b) as cache:  # only the incomplete tail (if any) is dropped
        assert cache.keys() == before and cache.dropped_tail_bytes == len(tail)

    # ---- resume in-process into B; record every key the backend really answers
    answered = []
    plain = OfflineBackend._answer

    def counting(self, request):
        answered.append(self.key_for(request))
        return plain(self, request)

    monkeypatch.setattr(OfflineBackend, "_answer", counting)
    t0 = time.perf_counter()
    res = P.build(DATASET, artifact_dir=str(art_b), **common)
    resume_s = time.perf_counter() - t0
    assert res["status"] == "built", res["status"]
    assert res["stale_reasons"] == ["no manifest manifest.build.json"]
    assert res["usage"]["requests"] == len(answered) == total - len(before)
    assert res["usage"]["cache_hits"] == len(before) and res["usage"]["failures"] == 0
    assert len(set(answered)) == len(answered), "one prompt answered twice"
    assert not set(answered) & set(before), "an already cached answer was requested again"

    # ---- nothing lost: the cache holds every answer, in the uninterrupted run's order and bytes
    lines_b, tail_b = read_lines(cache_b)
    assert tail_b == b"" and len(lines_b) == total
    assert cache_b.read_bytes() == (root_a / "llm_cache.jsonl").read_bytes()

    # ---- identical final artefacts (every manifest output) and manifests minus volatile fields
    man_a, man_b = manifest_core(root_a), manifest_core(root_b)
    assert set(man_a["outputs"]) == set(OUTPUTS) == set(man_b["outputs"])
    for name in OUTPUTS:
        assert (root_b / name).read_bytes() == ref_bytes[name], f"{name} differs after resume"
    assert man_b == man_a
    assert not [p.name for p in root_b.iterdir() if ".tmp" in p.name]  # no temp leftovers
    print(f"total={total} cached_before_kill={len(before)} resumed={len(answered)} "
          f"resume_s={resume_s:.2f}")

    # ---- a third run is a no-op (fresh, skipped)
    again = P.build(DATASET, artifact_dir=str(art_b), **common)
    assert again["status"] == "fresh" and len(answered) == total - len(before)

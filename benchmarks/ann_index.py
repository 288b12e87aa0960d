"""Approximate GSU / representation index on a synthetic 1M-item catalogue: recall@K vs exact.

The catalogue is a Gaussian mixture (clustered, like real item embeddings, so that nearest
neighbours are meaningful and an approximate index can miss them): ``--clusters`` centres drawn
from N(0, I_d), cluster sizes from a Zipf-like law, items = centre + N(0, noise^2 I_d). Queries are
fresh draws from the same mixture (not catalogue items). Every index is an inner-product index over
L2-normalised vectors (cosine), built by :class:`recbole_reaseq.model.layers.KnowledgeIndex`
(the code the serving GSU and ``gsu_index`` use).

Measured per index and search setting: build time, query time per query (all queries in one
batch call, ``--threads`` faiss threads), recall@K = mean over queries of
|approx top-K  &  exact top-K| / K for K = 10 and 50, and the speed ratio exact / approximate.
Writes ``benchmarks/results/ann_index.{md,csv}``.

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/ann_index.py [--items 1000000 --dim 128]
"""
import argparse
import csv
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.common import cpu_model  # noqa: E402
from recbole_reaseq.model.layers import KnowledgeIndex  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
KS = (10, 50)


def mixture(n: int, dim: int, clusters: int, noise: float, rng):
    """``n`` points [n, dim] float32 of a Gaussian mixture, its centres and weights."""
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    weights = 1.0 / np.arange(1, clusters + 1) ** 0.8                  # Zipf-like cluster sizes
    weights /= weights.sum()
    return sample(n, centres, weights, noise, rng), centres, weights


def sample(n, centres, weights, noise, rng) -> np.ndarray:
    out = np.empty((n, centres.shape[1]), dtype=np.float32)
    step = 100_000
    for s in range(0, n, step):
        m = min(step, n - s)
        comp = rng.choice(len(centres), size=m, p=weights)
        out[s:s + m] = centres[comp] + noise * rng.standard_normal(
            (m, centres.shape[1]), dtype=np.float32)
    return out


def recall(approx: np.ndarray, exact: np.ndarray, k: int) -> float:
    hits = sum(np.intersect1d(a[:k][a[:k] >= 0], e[:k]).size for a, e in zip(approx, exact))
    return hits / float(k * len(exact))


def timed_search(index: KnowledgeIndex, queries: np.ndarray, k: int, singles: int):
    """(rows [Q, k], seconds of one batched search, seconds per query searched one at a time)."""
    t = time.perf_counter()
    _, rows = index.search(queries, k)
    batched = time.perf_counter() - t
    t = time.perf_counter()
    for q in queries[:singles]:
        index.search(q[None], k)
    return rows.numpy(), batched, (time.perf_counter() - t) / singles


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--clusters", type=int, default=2000)
    parser.add_argument("--noise", type=float, default=1.0,
                        help="per-dimension std of items around their centre (centres ~ N(0, 1))")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--nlist", type=int, default=1024)
    parser.add_argument("--nprobes", default="1,4,16,64")
    parser.add_argument("--hnsw_m", type=int, default=16)
    parser.add_argument("--ef_searches", default="16,64,256")
    parser.add_argument("--ef_constructions", default="40",
                        help="HNSW build beams (config gsu_index_ef_construction), one index each")
    parser.add_argument("--singles", type=int, default=100,
                        help="queries also searched one at a time (serving latency)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=os.path.join(HERE, "results", "ann_index"))
    args = parser.parse_args()

    import faiss
    faiss.omp_set_num_threads(args.threads)
    rng = np.random.default_rng(args.seed)
    t0 = time.perf_counter()
    items, centres, weights = mixture(args.items, args.dim, args.clusters, args.noise, rng)
    queries = sample(args.queries, centres, weights, args.noise, rng)
    print(f"data: {items.shape} in {time.perf_counter() - t0:.1f}s", flush=True)
    kmax = max(KS)

    rows = []

    def record(kind, params, build_s, index, exact_rows=None, exact_s=None, **search):
        index.set_search_params(**search)
        found, secs, single = timed_search(index, queries, kmax, args.singles)
        row = {"index": kind, "params": params, "build_s": round(build_s, 2),
               "batched_query_ms": round(1000 * secs / len(queries), 4),
               "single_query_ms": round(1000 * single, 4)}
        ref = found if exact_rows is None else exact_rows
        for k in KS:
            row[f"recall@{k}"] = round(recall(found, ref, k), 4)
        row["speedup_batched"] = round((exact_s[0] if exact_s else secs) / secs, 2)
        row["speedup_single"] = round((exact_s[1] if exact_s else single) / single, 2)
        rows.append(row)
        print(row, flush=True)
        write(args, rows)
        return found, (secs, single)

    t = time.perf_counter()
    flat = KnowledgeIndex(items, index="flat")
    exact_rows, exact_s = record("flat", "exact IndexFlatIP", time.perf_counter() - t, flat)
    del flat

    t = time.perf_counter()
    ivf = KnowledgeIndex(items, index="ivf", nlist=args.nlist)
    build = time.perf_counter() - t
    for nprobe in [int(v) for v in args.nprobes.split(",")]:
        record("ivf", f"nlist={args.nlist}, nprobe={nprobe}", build, ivf, exact_rows, exact_s,
               nprobe=nprobe)
    del ivf

    for efc in [int(v) for v in args.ef_constructions.split(",")]:
        t = time.perf_counter()
        hnsw = KnowledgeIndex(items, index="hnsw", hnsw_m=args.hnsw_m, ef_construction=efc)
        build = time.perf_counter() - t
        for ef in [int(v) for v in args.ef_searches.split(",")]:
            record("hnsw", f"M={args.hnsw_m}, efConstruction={efc}, efSearch={ef}", build, hnsw,
                   exact_rows, exact_s, ef_search=ef)
        del hnsw
    print(f"total {time.perf_counter() - t0:.0f}s", flush=True)


def write(args, rows):
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    cols = list(rows[0])
    with open(args.out + ".csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        w.writerows(rows)
    lines = [
        "# Approximate GSU index vs exact search (synthetic catalogue)",
        "",
        f"Generated by `OMP_NUM_THREADS={args.threads} nice -n 10 python benchmarks/ann_index.py "
        f"--items {args.items} --dim {args.dim} --clusters {args.clusters} --noise {args.noise} "
        f"--queries {args.queries} --singles {args.singles} --nlist {args.nlist} "
        f"--nprobes {args.nprobes} "
        f"--hnsw_m {args.hnsw_m} --ef_searches {args.ef_searches} "
        f"--ef_constructions {args.ef_constructions} --seed {args.seed}`.",
        "",
        f"- catalogue: {args.items:,} items, dimension {args.dim}, Gaussian mixture of "
        f"{args.clusters} clusters (centres ~ N(0, I), Zipf-like sizes, per-dimension noise "
        f"{args.noise}); {args.queries} fresh queries from the same mixture; seed {args.seed}",
        "- cosine = inner product over L2-normalised vectors; indexes built by "
        "`KnowledgeIndex(index=flat|ivf|hnsw)` (config key `gsu_index`)",
        "- recall@K = mean over queries of |approx top-K ∩ exact top-K| / K (K=50 searched once, "
        "recall@10 from its first 10); batched_query_ms = one search call with all queries / "
        f"number of queries (throughput; exact search is a BLAS matrix product here); "
        f"single_query_ms = the first {args.singles} queries searched one call each (serving "
        f"latency); speedup = exact time / index time; faiss threads: {args.threads}",
        f"- machine: {cpu_model()}, shared with other jobs (timings are indicative; ratios were "
        "measured back to back in one process)",
        "",
        "| " + " | ".join(rows[0]) + " |",
        "|" + "---|" * len(rows[0]),
    ]
    lines += ["| " + " | ".join(str(r[c]) for c in rows[0]) + " |" for r in rows]
    with open(args.out + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()

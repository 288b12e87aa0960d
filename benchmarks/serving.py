"""ReaSeqCTR serving: deduplicated vs naive K/V projection of the retrieved history items.

A serving request is one user's history and C candidate items. For every candidate the GSU
retrieves the K history items most similar to it (knowledge cosine); the ESU needs their key and
value projections. The naive path embeds and projects every candidate's K retrieved items (C * K
rows); the deduplicated path (the paper's "System Deployment and Optimization") merges the
retrieved items of all candidates, embeds and projects each unique item once and gathers per
candidate (``ReaSeqCTR.serve``; outputs equal within 1e-6, tested). Everything else (GSU, anchors,
MLP) is the same code in both paths, so the ratio is the end-to-end saving of a request.

Histories: real amazon-beauty users (their last <= 20 items, the training length) and, as the
paper's long-sequence setting, synthetic histories of 200 random Beauty items (the model is built
with MAX_ITEM_LIST_LENGTH 200 for them). Candidates: uniform random items. The two paths run
interleaved, request by request, in one process (so machine load hits both alike); the model is
untrained but seeded (latency does not depend on the weights, and the GSU uses the frozen
knowledge). Writes benchmarks/results/serving.{md,csv,png}.

    python benchmarks/serving.py [--requests 30] [--threads 1]
"""
import argparse
import os
import statistics
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.common import cpu_model, markdown_table, write_csv  # noqa: E402
from recbole_reaseq.quick_start import make_config  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
CANDIDATES = (100, 500, 1000)


def build(dataset_name: str, max_len: int, seed: int):
    from recbole.data import create_dataset
    from recbole.utils import init_seed

    from recbole_reaseq.model.reaseqctr import ReaSeqCTR

    config = make_config("ReaSeqCTR", dataset_name, config_dict={
        "MAX_ITEM_LIST_LENGTH": max_len, "seed": seed, "state": "WARNING",
        "reaseq_artifact_dir": os.path.join(REPO, "artifacts")})
    dataset = create_dataset(config)
    dataset.build()              # RecBole turns the feature tables into Interactions here
    init_seed(seed, True)
    return config, dataset, ReaSeqCTR(config, dataset).eval()


def real_histories(dataset, n: int, max_len: int, rng) -> list:
    inter = dataset.inter_feat
    users = inter["user_id"].numpy()
    items = inter["item_id"].numpy()
    order = np.lexsort((inter["timestamp"].numpy(), users))
    users, items = users[order], items[order]
    starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
    ends = np.r_[starts[1:], len(users)]
    pick = rng.choice(len(starts), size=n, replace=False)
    return [items[starts[i]:ends[i]][-max_len:] for i in pick]


def time_request(model, seq, length, cands, kv):
    start = time.perf_counter()
    model.serve(seq, length, cands, kv=kv)
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default="amazon-beauty")
    parser.add_argument("--requests", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=2020)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(args.seed)

    rows = []
    settings = [("real (last <= 20 items)", 20), ("synthetic, 200 items", 200)]
    for label, max_len in settings:
        config, dataset, model = build(args.dataset, max_len, args.seed)
        n_items = dataset.item_num
        if max_len == 20:
            histories = real_histories(dataset, args.requests, max_len, rng)
        else:
            histories = [rng.integers(1, n_items, size=max_len) for _ in range(args.requests)]
        for n_cands in CANDIDATES:
            times = {"naive": [], "dedup": []}
            rows_naive, rows_dedup = [], []
            for r, hist in enumerate(histories):
                seq = torch.zeros(1, max_len, dtype=torch.long)
                seq[0, :len(hist)] = torch.as_tensor(hist)
                length = torch.tensor([len(hist)])
                cands = torch.as_tensor(rng.integers(1, n_items, size=n_cands))
                state = model.encode_user(torch.zeros(1, dtype=torch.long), seq, length,
                                          project_history=False)
                idx, valid = model.retrieve(state, cands.view(1, -1))
                ids = model.retrieved_items(state, idx, valid)
                rows_naive.append(ids.numel())
                rows_dedup.append(torch.unique(ids).numel())
                model.serve(seq, length, cands, kv="dedup")            # warm-up
                best = {"naive": float("inf"), "dedup": float("inf")}
                for rep in range(args.repeats):                        # min: least disturbed
                    for kv in (("naive", "dedup") if (r + rep) % 2 == 0 else ("dedup", "naive")):
                        best[kv] = min(best[kv], time_request(model, seq, length, cands, kv))
                for kv in best:
                    times[kv].append(best[kv])
            naive_ms = 1000 * statistics.median(times["naive"])
            dedup_ms = 1000 * statistics.median(times["dedup"])
            rows.append({"history": label, "history_len_mean": round(
                float(np.mean([len(h) for h in histories])), 1), "candidates": n_cands,
                "K": model.top_k, "naive_ms": round(naive_ms, 2), "dedup_ms": round(dedup_ms, 2),
                "speedup": round(naive_ms / dedup_ms, 2),
                "kv_rows_naive": int(np.mean(rows_naive)),
                "kv_rows_dedup": round(float(np.mean(rows_dedup)), 1)})
            print(rows[-1], flush=True)

    out = os.path.join(HERE, "results", "serving")
    write_csv(out + ".csv", rows)
    with open(out + ".md", "w") as f:
        f.write("# ReaSeqCTR serving: deduplicated vs naive K/V projection\n\n")
        f.write(f"Command: `python benchmarks/serving.py --requests {args.requests} --threads "
                f"{args.threads} --repeats {args.repeats}`  \n")
        f.write(f"Machine: {os.cpu_count()} cores, {cpu_model()}, torch {torch.__version__} "
                f"({torch.get_num_threads()} threads); seed {args.seed}; data {args.dataset}; "
                f"ReaSeqCTR defaults (hidden {config['hidden_size']}, K = {model.top_k}, "
                f"{config['n_anchors']} anchors, both pathways, SIDs, side features, item ID); "
                f"{args.requests} requests per row, each timed {args.repeats} times per path "
                "(paths interleaved, the fastest kept: the least disturbed by other load) in one "
                "process; the table gives the median over requests of the latency of one request "
                "(GSU + ESU + anchors + MLP, no "
                "batching across requests); kv_rows = item rows embedded and projected to K/V "
                "(naive: C x K; dedup: unique retrieved items, mean over requests).\n\n")
        f.write(markdown_table(rows))
    plot(rows, out + ".png")
    print(open(out + ".md").read())


def plot(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for label in dict.fromkeys(r["history"] for r in rows):
        sub = [r for r in rows if r["history"] == label]
        c = [r["candidates"] for r in sub]
        ax.plot(c, [r["naive_ms"] for r in sub], "o--", label=f"naive, {label}")
        ax.plot(c, [r["dedup_ms"] for r in sub], "o-", label=f"dedup, {label}")
    ax.set_xlabel("candidates per request")
    ax.set_ylabel("median latency per request (ms)")
    ax.set_title("ReaSeqCTR serving: K/V deduplication")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()

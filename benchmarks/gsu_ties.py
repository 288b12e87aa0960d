"""How often does GSU tie-breaking change what ReaSeqCTR's retrieval pathway sees?

The GSU keeps the ``gsu_top_k`` history items most cosine-similar to the target under the frozen
knowledge embeddings. Items with identical knowledge vectors (on ml-100k the offline rules keep
only the genres, so many movies share one vector) tie, and ``gsu_tie_break`` decides which of
them are kept: ``older`` (default) or ``recent``. The two choices give different retrieved SETS
exactly when a tie straddles the K-th slot. This script counts that on the real CTR-track test
split: every test user's history and its fixed 1 + 99 candidates, the artefacts and history cap
of the leaderboard suites. No training: the GSU uses only the frozen knowledge, so the counts
hold for every trained ReaSeqCTR with the same artefacts and K.

Writes benchmarks/results/gsu_ties.{md,csv}.

    python benchmarks/gsu_ties.py [--datasets amazon-beauty ml-100k] [--k 10]
"""
import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.common import (cpu_model, markdown_table, write_csv,  # noqa: E402
                               write_markdown)
from recbole_reaseq.quick_start import make_config, prepare_data  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)


def tie_stats(sims: torch.Tensor, mask: torch.Tensor, k: int) -> dict:
    """Counts over the rows of ``sims`` / ``mask`` [..., L] (one row = a (user, candidate) pair)
    of the GSU's retrieved sets under both tie breaks (``masked_topk`` with ``ties`` earlier /
    later, as ``ReaSeqCTR.retrieve``): ``pairs``, ``long`` (more than ``k`` real positions),
    ``differ`` (the two sets differ), ``boundary`` (equal similarities at slots k and k + 1)
    and ``shared`` (summed over long rows: the fraction of the k slots both sets keep)."""
    from recbole_reaseq.model.layers import masked_topk

    older, valid = masked_topk(sims, mask, k, "earlier")                       # [..., K] x 2
    recent, _ = masked_topk(sims, mask, k, "later")                            # [..., K]
    is_long = mask.sum(-1) > k                                                 # [...]
    # both hold distinct positions, so: same set <=> every valid older index is in recent
    hits = (older.unsqueeze(-1) == recent.unsqueeze(-2)).any(-1) & valid       # [..., K]
    shared = hits.sum(-1)                                                      # [...]
    top = sims.masked_fill(~mask, float("-inf")).sort(dim=-1, descending=True).values
    tie = torch.zeros_like(is_long)
    if top.shape[-1] > k:
        tie = is_long & (top[..., k - 1] == top[..., k])                       # [...]
    return {"pairs": int(is_long.numel()), "long": int(is_long.sum()),
            "differ": int((shared < valid.sum(-1)).sum()), "boundary": int(tie.sum()),
            "shared": float((shared[is_long].float() / k).sum())}


def tie_counts(model, test_data, candidates, k: int) -> dict:
    """:func:`tie_stats` over every test user of ``test_data`` and its fixed candidates."""
    dataset = test_data._dataset
    users, total = 0, {"pairs": 0, "long": 0, "differ": 0, "boundary": 0, "shared": 0.0}
    for interaction, _history, _pos_u, _pos_i in test_data:
        uids = interaction[dataset.uid_field]
        cands = torch.as_tensor(candidates.candidates(uids.numpy(), "test"))    # [B, C]
        with torch.no_grad():
            state = model.encode_user(uids, interaction[model.ITEM_SEQ],
                                      interaction[model.ITEM_SEQ_LEN])
            query = model.knowledge_unit[cands]                                # [B, C, D]
            sims = torch.einsum("bcd,bld->bcl", query, state["hist_knowledge"])  # [B, C, L]
        mask = state["mask"].unsqueeze(1).expand_as(sims)                      # [B, C, L]
        users += len(uids)
        for key, value in tie_stats(sims, mask, k).items():
            total[key] += value
    if total["differ"] != total["boundary"]:    # the sets differ exactly at a boundary tie
        raise AssertionError(f"{total['differ']} pairs with different sets vs "
                             f"{total['boundary']} boundary ties")
    long_pairs = total["long"]
    return {"users": users, "pairs": total["pairs"], "pairs_longer_than_k": long_pairs,
            "pairs_sets_differ": total["differ"],
            "share_of_long_pairs_differ": total["differ"] / long_pairs if long_pairs else 0.0,
            "mean_overlap_long_pairs": total["shared"] / long_pairs if long_pairs else 1.0}


def measure(dataset_name: str, k: int, seed: int) -> dict:
    from recbole.utils import init_seed

    from recbole_reaseq.data.candidates import load_or_build_candidates
    from recbole_reaseq.model.reaseqctr import ReaSeqCTR

    config = make_config("ReaSeqCTR", dataset_name, config_dict={
        "seed": seed, "state": "WARNING", "gsu_top_k": k, "eval_batch_size": 256,
        "reaseq_artifact_dir": os.path.join(REPO, "artifacts")})
    dataset, _train, _valid, test_data = prepare_data(config)
    init_seed(seed, True)
    model = ReaSeqCTR(config, dataset).eval()
    distinct = int(torch.unique(model.knowledge_unit[1:], dim=0).shape[0])
    row = {"dataset": dataset_name, "K": k, "history_cap": config["MAX_ITEM_LIST_LENGTH"],
           "items": dataset.item_num - 1, "distinct_knowledge_vectors": distinct}
    row.update(tie_counts(model, test_data, load_or_build_candidates(config, dataset), k))
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["amazon-beauty", "ml-100k"])
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--seed", type=int, default=2020)
    args = parser.parse_args(argv)
    rows = [measure(name, args.k, args.seed) for name in args.datasets]
    out = os.path.join(HERE, "results", "gsu_ties")
    write_csv(out + ".csv", rows)
    shown = [{"data set": r["dataset"], "K": r["K"], "cap": r["history_cap"],
              "items": r["items"], "distinct knowledge vectors": r["distinct_knowledge_vectors"],
              "test users": r["users"], "(user, candidate) pairs": r["pairs"],
              "pairs with > K history items": f"{r['pairs_longer_than_k'] / r['pairs']:.1%}",
              "of those, retrieved set depends on the tie break":
                  f"{r['share_of_long_pairs_differ']:.1%}",
              "mean shared slots (older vs recent)": f"{r['mean_overlap_long_pairs']:.3f}"}
             for r in rows]
    text = ["# GSU tie-breaking: older vs recent", "",
            "Retrieved sets of ReaSeqCTR's GSU on the CTR-track test split (fixed 1 + 99 "
            "candidates per user), `gsu_tie_break: older` vs `recent`, from the frozen offline "
            "knowledge embeddings in `artifacts/` (no training involved). A pair's sets differ "
            "exactly when equal similarities straddle the K-th slot (checked). \"Mean shared "
            "slots\": the fraction of the K retrieved items that both choices keep, over the "
            "pairs whose history has more than K items.", "",
            markdown_table(shown), "",
            f"Command: `python benchmarks/gsu_ties.py --datasets {' '.join(args.datasets)} "
            f"--k {args.k}`. Machine: {cpu_model()}. Seed {args.seed} (only the data loading "
            "order; the counts do not depend on it)."]
    write_markdown(out, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

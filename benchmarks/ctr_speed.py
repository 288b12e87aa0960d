"""Training speed of ReaSeqCTR relative to RecBole's DIN on the same data, in one run.

Builds DIN, ReaSeqCTR (defaults: both pathways, SIDs), ReaSeqCTR with the ``trim_padding``
transform (dynamic padding: each batch cut to its longest real sequence) and ReaSeqCTR with
``trim_padding`` on length-bucketed batches (``length_bucketing``: chunks of 50 batches sorted by
history length, so that trimming has something to cut) on one data set, then
times the same number of training steps (forward + backward + Adam) of each, interleaved batch
by batch in ONE process so that machine load hits every variant alike. Each variant draws its
batches from its own RecBole train loader (same config and seed, so the same shuffle). Reports
seconds per batch, the estimated training epoch (sec/batch x batches per epoch), the ratio to
DIN, and the padding share of the history cells (after trimming). Writes benchmarks/results/ctr_speed.{md,csv}.

    python benchmarks/ctr_speed.py [--dataset amazon-beauty] [--batches 30] [--threads 1]
"""
import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.common import (cpu_model, interleaved_training_steps,  # noqa: E402
                               markdown_table, write_csv)
from recbole_reaseq.quick_start import build_model, make_config, prepare_data  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
VARIANTS = (("DIN", "DIN", [], None), ("ReaSeqCTR", "ReaSeqCTR", [], None),
            ("ReaSeqCTR + trim_padding", "ReaSeqCTR", ["trim_padding"], None),
            ("ReaSeqCTR + trim_padding + length_bucketing 50", "ReaSeqCTR", ["trim_padding"], 50))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default="amazon-beauty")
    parser.add_argument("--batches", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=2020)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    variants = []
    for label, model_name, transforms, bucketing in VARIANTS:
        cfg = make_config(model_name, args.dataset, config_dict={
            "seed": args.seed, "state": "WARNING", "reaseq_transforms": transforms,
            "length_bucketing": bucketing,
            "reaseq_artifact_dir": os.path.join(REPO, "artifacts")})
        _ds, train, _v, _t = prepare_data(cfg)
        model = build_model(cfg, train)
        variants.append({"label": label, "cfg": cfg, "train": train, "model": model.train(),
                         "opt": torch.optim.Adam(model.parameters(), lr=1e-3),
                         "params": sum(p.numel() for p in model.parameters())})
    interleaved_training_steps(variants, args.batches, warmup=2)

    din = variants[0]["seconds"] / variants[0]["batches"]
    rows = []
    for v in variants:
        per_batch = v["seconds"] / v["batches"]
        rows.append({"model": v["label"], "params": v["params"],
                     "sec_per_batch": round(per_batch, 4),
                     "est_epoch_sec": round(per_batch * len(v["train"]), 1),
                     "ratio_vs_DIN": round(per_batch / din, 2),
                     "padding_share": round(1 - v["real"] / v["cells"], 4)})
    out = os.path.join(HERE, "results", "ctr_speed")
    write_csv(out + ".csv", rows)
    cfg = variants[1]["cfg"]
    with open(out + ".md", "w") as f:
        f.write(f"# Training speed: ReaSeqCTR vs DIN on {args.dataset}\n\n")
        f.write(f"Command: `python benchmarks/ctr_speed.py --dataset {args.dataset} --batches "
                f"{args.batches} --threads {args.threads}`  \n")
        f.write(f"Machine: {os.cpu_count()} cores, {cpu_model()}, torch {torch.__version__} "
                f"({torch.get_num_threads()} threads); seed {args.seed}; train_batch_size "
                f"{cfg['train_batch_size']} (pointwise: positives + 1 sampled negative each); "
                f"MAX_ITEM_LIST_LENGTH {cfg['MAX_ITEM_LIST_LENGTH']}; {args.batches} timed "
                "training steps per model after 2 warm-up steps, interleaved batch by batch in "
                "one process; estimated epoch = sec/batch x batches per epoch. Peak memory of "
                "whole training runs is in the Table 3 report (peak RSS per run).\n\n")
        f.write(markdown_table(rows))
    print(open(out + ".md").read())


if __name__ == "__main__":
    main()

"""Dynamic padding on amazon-beauty: training cost per epoch with and without ``trim_padding``.

Measures, in ONE process and interleaved (so machine load hits every variant alike), the time of
the same training batches of SASRec for MAX_ITEM_LIST_LENGTH 50 and 20, untrimmed vs trimmed, and
the share of padding positions in those batches. Writes benchmarks/results/padding.{md,csv}.

    python benchmarks/padding.py [--batches 12] [--dataset amazon-beauty]
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


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default="amazon-beauty")
    parser.add_argument("--model", default="SASRec")
    parser.add_argument("--batches", type=int, default=12)
    parser.add_argument("--seed", type=int, default=2020)
    args = parser.parse_args()

    variants = []
    for max_len in (50, 20):
        for trim in (False, True):
            cfg = make_config(args.model, args.dataset, config_dict={
                "MAX_ITEM_LIST_LENGTH": max_len, "seed": args.seed, "state": "WARNING",
                "reaseq_transforms": ["trim_padding"] if trim else []})
            _ds, train, _v, _t = prepare_data(cfg)
            model = build_model(cfg, train)
            opt = torch.optim.Adam(model.parameters(), lr=1e-3)
            variants.append({"max_len": max_len, "trim": trim, "cfg": cfg, "train": train,
                             "model": model, "opt": opt, "n_batches_epoch": len(train)})
    interleaved_training_steps(variants, args.batches)

    base = variants[0]["seconds"] / variants[0]["batches"]
    rows = []
    for v in variants:
        per_batch = v["seconds"] / v["batches"]
        rows.append({"MAX_ITEM_LIST_LENGTH": v["max_len"], "trim_padding": v["trim"],
                     "sec_per_batch": round(per_batch, 4),
                     "est_epoch_sec": round(per_batch * v["n_batches_epoch"], 1),
                     "padding_share": round(1 - v["real"] / v["cells"], 4),
                     "speedup_vs_len50_untrimmed": round(base / per_batch, 2)})
    out = os.path.join(HERE, "results", "padding")
    write_csv(out + ".csv", rows)
    cfg = variants[0]["cfg"]
    with open(out + ".md", "w") as f:
        f.write(f"# Dynamic padding: {args.model} on {args.dataset}\n\n")
        f.write(f"Command: `python benchmarks/padding.py --batches {args.batches} --dataset "
                f"{args.dataset}`  \n")
        f.write(f"Machine: {os.cpu_count()} cores, {cpu_model()}, torch {torch.__version__} "
                f"({torch.get_num_threads()} threads); seed {args.seed}; train_batch_size "
                f"{cfg['train_batch_size']}; {args.batches} training batches per variant (same data, per-variant shuffle), "
                "interleaved in one process; epoch estimate = sec/batch x batches per epoch.\n\n")
        f.write(markdown_table(rows))
    print(open(out + ".md").read())


if __name__ == "__main__":
    main()

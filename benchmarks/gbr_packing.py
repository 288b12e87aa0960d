"""GBR reasoner training speed: packed rows vs right-padded batches, side by side, as a ratio.

A batch of B training sequences is padded to its longest one, so on a short-history data set
most of the [B, T] slots are padding (amazon-beauty: median 6 tokens, but nearly every batch of
256 holds a sequence at the 64-token cap). ``ReasonerConfig.pack`` (default on) lays the
sequences side by side in rows of T slots and restricts attention to each sequence's own tokens:
the same function (tested equal to the padded path), run on about the real tokens only.

This script prepares the real GBR training view of a data set (rule, loss and sizes of the
variant, as ``python -m recbole_reaseq.gbr``), builds one reasoner, copies it, and times
``--steps`` training steps of each (forward + loss + backward + Adam) on the SAME batches,
alternating packed / padded step by step in one process so that machine load hits both alike.
Writes benchmarks/results/gbr_packing.{md,csv}.

    python benchmarks/gbr_packing.py [--dataset amazon-beauty] [--rule C] [--steps 20]
"""
import argparse
import copy
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.common import cpu_model, markdown_table, write_csv  # noqa: E402
from recbole_reaseq.gbr.reasoner import (PAD, collate, make_optimizer,  # noqa: E402
                                         pack_sequences, training_step)
from recbole_reaseq.gbr.train import GBRConfig, _sequences, build_model, prepare  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="amazon-beauty")
    p.add_argument("--rule", default="C")
    p.add_argument("--loss", default="softmax")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=2020)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    cfg = GBRConfig(dataset=args.dataset, rule=args.rule, loss=args.loss, seed=args.seed,
                    progress=False).check()
    prep = prepare(cfg)
    sequences = _sequences(prep, prep.train_rows)
    gen = torch.Generator().manual_seed(args.seed)
    order = torch.randperm(len(sequences), generator=gen).tolist()
    n_batches = args.warmup + args.steps
    batches = [collate([sequences[i] for i in order[k * cfg.batch_size:(k + 1) * cfg.batch_size]])
               for k in range(n_batches)]

    packed = build_model(prep)
    padded = copy.deepcopy(packed)                     # same weights, its own config
    packed.cfg.pack, padded.cfg.pack = True, False
    runs = {"packed": {"model": packed}, "padded": {"model": padded}}
    for run in runs.values():
        run["opt"], run["sched"] = make_optimizer(run["model"], cfg.lr, 10, 1000)
        run["seconds"], run["losses"] = 0.0, []
    slots = {"real": 0, "padded": 0, "packed": 0}
    for k, batch in enumerate(batches):
        lengths = (batch.kinds != PAD).sum(1).tolist()
        if k >= args.warmup:
            T = batch.kinds.shape[1]
            slots["real"] += sum(lengths)
            slots["padded"] += len(lengths) * T
            slots["packed"] += pack_sequences(lengths, T)[2] * T
        for name in ("packed", "padded") if k % 2 == 0 else ("padded", "packed"):
            run = runs[name]
            torch.manual_seed(args.seed + k)
            start = time.perf_counter()
            out = training_step(run["model"], batch, run["opt"], run["sched"],
                                torch.Generator().manual_seed(args.seed + k), variant=cfg.loss,
                                temperature=cfg.temperature, weighting=cfg.weighting,
                                negatives=cfg.negatives, t_min=cfg.t_min,
                                grad_clip=cfg.grad_clip)
            if k >= args.warmup:
                run["seconds"] += time.perf_counter() - start
                run["losses"].append(out["loss"])

    base = runs["padded"]["seconds"] / args.steps
    rows = [{"layout": name, "sec_per_step": round(runs[name]["seconds"] / args.steps, 4),
             "speedup_vs_padded": round(base / (runs[name]["seconds"] / args.steps), 2),
             "slot_share_real": round(slots["real"] / slots[name], 4),
             "mean_loss": round(sum(runs[name]["losses"]) / args.steps, 4)}
            for name in ("padded", "packed")]
    out = os.path.join(HERE, "results", "gbr_packing")
    write_csv(out + ".csv", rows)
    with open(out + ".md", "w") as f:
        f.write(f"# GBR reasoner training: packed rows vs padded batches ({args.dataset}, "
                f"{cfg.variant})\n\n")
        f.write(f"Command: `python benchmarks/gbr_packing.py --dataset {args.dataset} --rule "
                f"{args.rule} --steps {args.steps} --threads {args.threads}`  \n")
        f.write(f"Machine: {os.cpu_count()} cores, {cpu_model()}, torch {torch.__version__} "
                f"({torch.get_num_threads()} threads), shared with other jobs; seed {args.seed}; "
                f"{args.steps} timed training steps of {cfg.batch_size} sequences per layout "
                f"after {args.warmup} warm-up steps, the same batches for both, alternating "
                "layouts step by step in one process (the ratio is the measurement; absolute "
                "times depend on the load). slot_share_real = real tokens / slots computed. "
                "Losses differ only through the dropout masks (the two models start equal and "
                "see the same batches and [MASK] draws).\n\n")
        f.write(markdown_table(rows))
        f.write("\nConfig: `" + json.dumps({k: v for k, v in vars(cfg).items()
                                            if k not in ("knowledge",)}, default=str) + "`\n")
    print(open(out + ".md").read())
    return 0


if __name__ == "__main__":
    sys.exit(main())

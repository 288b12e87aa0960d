"""ReaSeq Table 5 analogue: GBR variants, [FILL] ratio, IB-PPL / IB-ACC on [MASK] and [FILL].

Variants (same data, seed, batch sizes and evaluation for all):

* GBR-T-0, GBR-C-0, GBR-TC-0: location rule T / C / TC, in-batch softmax loss (eq. 6-7);
* GBR-C-1, GBR-C-2: rule C, pointwise cosine / Euclidean loss;
* GBR-C-0-invt: rule C, softmax loss with LLaDA's 1/t weighting instead of the mean.

Each variant trains through :func:`recbole_reaseq.gbr.train.train` (resumable: a rerun continues
after the last finished epoch of every variant and skips finished ones). Metrics are those of the
last epoch on the held-out users (:func:`recbole_reaseq.gbr.train.evaluate_ib`: fixed batches of
``--eval-batch-size`` sequences, B - 1 in-batch negatives, fixed masking and negative seeds).

    python benchmarks/gbr_table5.py --dataset amazon-beauty --epochs 10 --threads 1
    -> benchmarks/results/gbr_table5_<dataset>.md and .csv
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.common import cpu_model  # noqa: E402

VARIANTS = [  # name, rule, loss, weighting
    ("GBR-T-0", "T", "softmax", "mean"),
    ("GBR-C-0", "C", "softmax", "mean"),
    ("GBR-TC-0", "TC", "softmax", "mean"),
    ("GBR-C-1", "C", "cosine", "mean"),
    ("GBR-C-2", "C", "euclidean", "mean"),
    ("GBR-C-0-invt", "C", "softmax", "inv_t"),
]
COLUMNS = ["variant", "rule", "loss", "weighting", "fill_ratio", "label_ratio", "mask_ppl",
           "mask_acc", "fill_ppl", "fill_acc", "n_mask", "n_fill", "epochs", "train_loss",
           "train_seconds"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dataset", default="amazon-beauty")
    p.add_argument("--data-path", dest="data_path", default=None)
    p.add_argument("--artifact-dir", dest="artifact_dir", default="artifacts")
    p.add_argument("--out-dir", dest="out_dir", default="benchmarks/results")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--schedule-epochs", dest="schedule_epochs", type=int, default=None,
                   help="LR schedule length (default: --epochs)")
    p.add_argument("--batch-size", dest="batch_size", type=int, default=256)
    p.add_argument("--eval-batch-size", dest="eval_batch_size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=2020)
    p.add_argument("--d-model", dest="d_model", type=int, default=128)
    p.add_argument("--n-layers", dest="n_layers", type=int, default=4)
    p.add_argument("--n-heads", dest="n_heads", type=int, default=8)
    p.add_argument("--max-len", dest="max_len", type=int, default=64)
    p.add_argument("--knowledge", default=None,
                   help="reaseq_knowledge options as JSON (e.g. for a tiny data set)")
    p.add_argument("--variants", default=None, help="comma-separated subset of the names")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    import json

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from recbole_reaseq.gbr.train import GBRConfig, prepare, train

    wanted = VARIANTS if not args.variants else [
        v for v in VARIANTS if v[0] in args.variants.split(",")]
    if args.variants and len(wanted) != len(args.variants.split(",")):
        known = ", ".join(v[0] for v in VARIANTS)
        print(f"error: --variants {args.variants!r}: known names are {known}", file=sys.stderr)
        return 2
    base = GBRConfig(
        dataset=args.dataset, data_path=args.data_path, artifact_dir=args.artifact_dir,
        epochs=args.epochs, schedule_epochs=args.schedule_epochs or args.epochs,
        batch_size=args.batch_size, eval_batch_size=args.eval_batch_size, lr=args.lr,
        seed=args.seed, d_model=args.d_model, n_layers=args.n_layers, n_heads=args.n_heads,
        max_len=args.max_len, knowledge=json.loads(args.knowledge) if args.knowledge else {},
        progress=not args.quiet)
    prepared = {}                                  # rule -> Prepared (location + labels once)
    rows = []
    start = time.perf_counter()
    for name, rule, loss, weighting in wanted:
        cfg = dataclasses.replace(base, rule=rule, loss=loss, weighting=weighting).check()
        assert cfg.variant == name, (cfg.variant, name)
        if rule not in prepared:
            prepared[rule] = prepare(cfg)
        prep = dataclasses.replace(prepared[rule], cfg=cfg)
        print(f"== {name}", flush=True)
        m = train(prep)
        f = m["final_metrics"]
        rows.append({"variant": name, "rule": rule, "loss": loss, "weighting": weighting,
                     "fill_ratio": m["fill_ratio"], "label_ratio": m["label_ratio"],
                     "mask_ppl": f["mask_ppl"], "mask_acc": f["mask_acc"],
                     "fill_ppl": f["fill_ppl"], "fill_acc": f["fill_acc"],
                     "n_mask": f["n_mask"], "n_fill": f["n_fill"], "epochs": m["epochs_done"],
                     "train_loss": f["train_loss"],
                     "train_seconds": sum(h["train_seconds"] for h in m["history"])})
    os.makedirs(args.out_dir, exist_ok=True)
    stem = os.path.join(args.out_dir, f"gbr_table5_{args.dataset}")
    with open(stem + ".csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=COLUMNS)
        w.writeheader()
        w.writerows(rows)
    fmt = lambda v: f"{v:.4f}" if isinstance(v, float) else str(v)  # noqa: E731
    config = {k: v for k, v in dataclasses.asdict(base).items()
              if k not in ("rule", "loss", "weighting", "progress", "data_path", "artifact_dir")}
    lines = [
        f"# GBR Table 5 analogue on {args.dataset}", "",
        "ReaSeq (arXiv 2512.21257) Table 5: [FILL] ratio = |U| / (training tokens + |U|), IB-PPL "
        "and IB-ACC (eq. 8-9) on [MASK] tokens (positive = the masked item) and on [FILL] tokens "
        "(positive = the masked item of the same sequence closest to the prediction), B - 1 "
        "in-batch negatives (one random item of every other sequence), cosine / 0.07, on the "
        "held-out users' training-view sequences after the last epoch. Every variant uses the "
        "same seed, batch sizes, masks and negatives.", "",
        f"- machine: {cpu_model()} ({platform.machine()}), torch {torch.__version__}, "
        f"threads {torch.get_num_threads()}",
        f"- seed {args.seed}; config: `{json.dumps(config, sort_keys=True)}`",
        f"- wall time of this call: {time.perf_counter() - start:.1f} s "
        f"(resumed variants only count what was left)", "",
        "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(fmt(r[c]) for c in COLUMNS) + " |" for r in rows]
    with open(stem + ".md", "w") as fh:
        fh.write("\n".join(lines) + "\n")
    print("\n".join(lines[-len(rows) - 2:]))
    print(f"wrote {stem}.md and {stem}.csv")
    return 0


if __name__ == "__main__":
    sys.exit(main())

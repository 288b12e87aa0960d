"""Table 5 at a common training point, from the per-epoch IB metrics GBR training logs.

``benchmarks/gbr_table5.py`` trains every variant to the same number of epochs and reports its
last epoch. When the variants were trained to different numbers of epochs of one schedule
(``schedule_epochs``), their ``train_log.jsonl`` still holds every epoch's held-out IB metrics at
the same learning-rate trajectory; this script tabulates them at one epoch (``--epoch``), plus
each variant's latest epoch.

    python benchmarks/gbr_table5_from_logs.py --dataset amazon-beauty --epoch 1
    -> benchmarks/results/gbr_table5_<dataset>_epoch<E>.{md,csv}
"""
import argparse
import csv
import glob
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)
from benchmarks.common import cpu_model  # noqa: E402

COLUMNS = ["variant", "rule", "loss", "weighting", "epoch", "of_schedule", "fill_ratio",
           "label_ratio", "mask_ppl", "mask_acc", "fill_ppl", "fill_acc", "n_mask", "n_fill",
           "train_loss"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default="amazon-beauty")
    parser.add_argument("--artifact-dir", dest="artifact_dir", default=os.path.join(REPO, "artifacts"))
    parser.add_argument("--epoch", type=int, default=1)
    args = parser.parse_args(argv)
    rows = []
    for root in sorted(glob.glob(os.path.join(args.artifact_dir, args.dataset, "gbr", "GBR-*"))):
        manifest_path = os.path.join(root, "manifest.train.json")
        if not os.path.isfile(manifest_path):
            continue
        with open(manifest_path, encoding="utf-8") as f:
            manifest = json.load(f)
        cfg = manifest["config"]
        history = manifest["history"]
        picks = [h for h in history if h["epoch"] == args.epoch]
        if history and history[-1]["epoch"] != args.epoch:
            picks.append(history[-1])
        for h in picks:
            rows.append({"variant": manifest["variant"], "rule": cfg["rule"], "loss": cfg["loss"],
                         "weighting": cfg["weighting"], "epoch": h["epoch"],
                         "of_schedule": cfg["schedule_epochs"],
                         "fill_ratio": round(manifest["fill_ratio"], 4),
                         "label_ratio": round(manifest["label_ratio"], 4),
                         "mask_ppl": round(h["mask_ppl"], 1), "mask_acc": round(h["mask_acc"], 4),
                         "fill_ppl": round(h["fill_ppl"], 1), "fill_acc": round(h["fill_acc"], 4),
                         "n_mask": h["n_mask"], "n_fill": h["n_fill"],
                         "train_loss": round(h["train_loss"], 4)})
    if not rows:
        raise FileNotFoundError(f"no trained GBR variant under {args.artifact_dir}/{args.dataset}/gbr")
    rows.sort(key=lambda r: (r["epoch"] != args.epoch, r["variant"], r["epoch"]))
    cfg = manifest["config"]
    out = os.path.join(HERE, "results", f"gbr_table5_{args.dataset}_epoch{args.epoch}")
    with open(out + ".csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    lines = [f"# GBR Table 5 analogue: {args.dataset}, epoch {args.epoch}", "",
             f"Regenerate: `python benchmarks/gbr_table5_from_logs.py --dataset {args.dataset} "
             f"--epoch {args.epoch}` after training the variants with `python -m recbole_reaseq.gbr "
             "train --dataset ... --rule R --loss L --epochs E --schedule-epochs S`.",
             "",
             f"Held-out users' IB metrics (B - 1 = {cfg['eval_batch_size'] - 1} in-batch negatives, "
             f"batch {cfg['eval_batch_size']}, eval seed {cfg['eval_seed']}, the same for every "
             f"variant); training: batch {cfg['batch_size']}, lr {cfg['lr']}, warm-up + cosine "
             f"over `of_schedule` epochs, seed {cfg['seed']}, {cfg['d_model']}-d x "
             f"{cfg['n_layers']} layers x {cfg['n_heads']} heads; machine {cpu_model()}. Rows at "
             "the common epoch first, then each variant's latest epoch. fill_ratio = |U| / "
             "training tokens, label_ratio = |L| / training tokens.", "",
             "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(str(r[c]) for c in COLUMNS) + " |" for r in rows]
    with open(out + ".md", "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

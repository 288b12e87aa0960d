"""GBR reasoner quality against training length: held-out IB metrics and where the fills lie.

For each listed variant folder (same rule and loss, trained for different lengths, e.g. GBR-C-0
for 3 epochs and GBR-C-0-s12 / GBR-C-0-s40 for 12 / 40, each with its own cosine schedule), reads
the last epoch of ``train_log.jsonl`` (IB-PPL / IB-ACC on [MASK] and [FILL] over the held-out
users, as Table 5) and measures the geometry of its stored fills against the real items
(:func:`benchmarks.gbr_qualitative.geometry`: cosine with the nearest real item, share of
distinct nearest items among 2,000 sampled fills). Writes
benchmarks/results/gbr_training_length_<dataset>.{md,csv}.

    python benchmarks/gbr_training_length.py --dataset amazon-beauty \
        --variants GBR-C-0 GBR-C-0-s12 GBR-C-0-s40
"""
import argparse
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)
from benchmarks.common import markdown_table, write_csv  # noqa: E402
from benchmarks.gbr_qualitative import geometry, load  # noqa: E402


def row(dataset: str, variant: str, artifact_dir: str) -> dict:
    root = os.path.join(artifact_dir, dataset, "gbr", variant)
    with open(os.path.join(root, "manifest.train.json"), encoding="utf-8") as f:
        manifest = json.load(f)
    with open(os.path.join(root, "train_log.jsonl"), encoding="utf-8") as f:
        last = [json.loads(line) for line in f if line.strip()][-1]
    z, _aug_manifest, _field, _ids, emb = load(dataset, variant, artifact_dir)
    geo = geometry(emb, z["fills"], seed=2020)              # as gbr_qualitative.py
    return {"variant": variant, "epochs": last["epoch"],
            "schedule_epochs": manifest["config"]["schedule_epochs"],
            "steps": last["epoch"] * manifest["steps_per_epoch"],
            "mask_ppl": round(last["mask_ppl"], 1), "mask_acc": round(last["mask_acc"], 3),
            "fill_ppl": round(last["fill_ppl"], 1), "fill_acc": round(last["fill_acc"], 3),
            "train_loss": round(last["train_loss"], 3),
            "fill_nn_cos": round(geo["nn_fill"], 3), "item_nn_cos": round(geo["nn_item"], 3),
            "distinct_nn_fills": round(geo["distinct_nn"], 3)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default="amazon-beauty")
    parser.add_argument("--variants", nargs="+", default=["GBR-C-0", "GBR-C-0-s12", "GBR-C-0-s40"])
    parser.add_argument("--artifact-dir", dest="artifact_dir",
                        default=os.path.join(REPO, "artifacts"))
    args = parser.parse_args(argv)
    rows = [row(args.dataset, v, args.artifact_dir) for v in args.variants]
    out = os.path.join(HERE, "results", f"gbr_training_length_{args.dataset}")
    write_csv(out + ".csv", rows)
    text = (f"# GBR reasoner quality vs training length ({args.dataset})\n\n"
            f"Command: `python benchmarks/gbr_training_length.py --dataset {args.dataset} "
            f"--variants {' '.join(args.variants)}`  \n"
            "Each row: the variant's last epoch (its own warm-up + cosine schedule over "
            "schedule_epochs; batch 256, seed 2020); IB metrics on the held-out users as in "
            "Table 5 (batch 128: 127 in-batch negatives, chance PPL 128 / ACC 0.008); geometry "
            "over 2,000 sampled stored fills (seed 2020, as gbr_qualitative.py): fill_nn_cos = mean cosine of a fill with "
            "its nearest real item, item_nn_cos = the same for real items (nearest other item), "
            "distinct_nn_fills = share of distinct nearest items among the sampled fills "
            "(1 = every fill points at another item).\n\n" + markdown_table(rows))
    with open(out + ".md", "w", encoding="utf-8") as f:
        f.write(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

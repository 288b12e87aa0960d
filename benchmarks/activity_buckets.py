"""GAUC gain over the baseline by user-activity bucket (the cold-start story), from stored runs.

Reads a suite's finished CTR-track runs (their per-user test AUC, ``per_user_test.npz``), the
training-history length of every user from the stored candidate set
(``artifacts/<dataset>/ctr_candidates/*.npz``, ``train_len`` = training targets, i.e. training
items - 1), and buckets users by training items. For every model: GAUC per bucket (mean over the
seeds it has), and the gain over the suite's ``baseline`` on the same users, per bucket. Per-user
ids in the runs are RecBole's internal ids; they are mapped to the raw user tokens through the
data set as RecBole loads it for the baseline model (same data, same remapping).

    python benchmarks/activity_buckets.py benchmarks/suites/table3_beauty.yaml
    -> benchmarks/results/<suite>_activity.{md,csv,png}
"""
from __future__ import annotations

import argparse
import glob
import os
import statistics
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)
from benchmarks.common import write_csv  # noqa: E402
from benchmarks.report import choose_baseline, collect, per_user  # noqa: E402
from benchmarks.run import expand, load_suite  # noqa: E402

# bucket edges in TRAINING ITEMS (5-core Beauty: every user has >= 3)
BUCKETS = [(3, 3), (4, 4), (5, 5), (6, 7), (8, 10), (11, 20), (21, 10**9)]


def bucket_label(lo: int, hi: int) -> str:
    return str(lo) if lo == hi else (f"{lo}+" if hi >= 10**9 else f"{lo}-{hi}")


def user_train_items(dataset_name: str, model: str) -> dict:
    """internal user id -> training items, through the stored candidate set."""
    from recbole.data import create_dataset

    from recbole_reaseq.quick_start import make_config

    files = glob.glob(os.path.join(REPO, "artifacts", dataset_name, "ctr_candidates", "*.npz"))
    if not files:
        raise FileNotFoundError(f"no stored candidate set under artifacts/{dataset_name}/"
                                "ctr_candidates: run the suite first")
    with np.load(files[0]) as z:
        raw = dict(zip(z["users"].tolist(), (z["train_len"] + 1).tolist()))
    config = make_config(model, dataset_name, config_dict={"state": "WARNING"})
    tokens = create_dataset(config).field2id_token[config["USER_ID_FIELD"]]
    return {i: raw[t] for i, t in enumerate(tokens) if t in raw}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("suite")
    args = parser.parse_args(argv)
    suite = load_suite(args.suite)
    if not suite.get("baseline"):
        raise KeyError(f"{args.suite} names no 'baseline' run")
    table = collect(expand(suite))
    out = os.path.join(HERE, "results", f"{suite['suite']}_activity")
    rows, lines = [], []
    for (dataset, protocol), models in sorted(table.items()):
        if protocol != "ctr":
            continue
        baseline = choose_baseline(suite["baseline"], models, protocol)
        if baseline not in models:
            continue
        base_model = next(r["result"] for r in models[baseline])["spec"]["model"]
        items = user_train_items(dataset, base_model)
        auc = {}                                   # model -> {internal uid: mean AUC over seeds}
        for name, runs in models.items():
            per_seed = [per_user(r) for r in runs]
            per_seed = [p for p in per_seed if p is not None]
            if not per_seed:
                continue
            acc: dict = {}
            for uids, vals in per_seed:
                for u, v in zip(uids.tolist(), vals.tolist()):
                    acc.setdefault(u, []).append(v)
            auc[name] = {u: statistics.mean(v) for u, v in acc.items() if len(v) == len(per_seed)}
        base = auc[baseline]
        header = ["model"] + [bucket_label(lo, hi) for lo, hi in BUCKETS]
        counts = []
        for lo, hi in BUCKETS:
            counts.append(sum(1 for u in base if lo <= items.get(u, -1) <= hi))
        lines += [f"## {dataset}: GAUC gain over {baseline} by training items (test split)", "",
                  "users per bucket: " + ", ".join(f"{bucket_label(lo, hi)}: {c}" for (lo, hi), c
                                                   in zip(BUCKETS, counts)), "",
                  f"{baseline} GAUC per bucket: " + ", ".join(
                      f"{statistics.mean([base[u] for u in base if lo <= items.get(u, -1) <= hi]):.4f}"
                      for lo, hi in BUCKETS), "",
                  "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for name, mine in auc.items():
            if name == baseline:
                continue
            gains = []
            for lo, hi in BUCKETS:
                users = [u for u in mine if u in base and lo <= items.get(u, -1) <= hi]
                gains.append(statistics.mean([mine[u] - base[u] for u in users])
                             if users else float("nan"))
            rows.append({"dataset": dataset, "model": name, **{
                bucket_label(lo, hi): g for (lo, hi), g in zip(BUCKETS, gains)}})
            lines.append(f"| {name} | " + " | ".join(f"{g:+.4f}" for g in gains) + " |")
        lines.append("")
        plot(rows, [bucket_label(lo, hi) for lo, hi in BUCKETS], baseline, out + ".png")
    text = (f"# {suite['suite']}: gain by user activity\n\nPer-user test AUC averaged over each "
            "model's seeds, minus the baseline's (named per data set), averaged within the "
            "bucket (= the GAUC "
            "difference on those users). Regenerate: `python benchmarks/activity_buckets.py "
            f"{os.path.relpath(args.suite, REPO)}`.\n\n" + "\n".join(lines))
    with open(out + ".md", "w", encoding="utf-8") as f:
        f.write(text)
    if rows:
        write_csv(out + ".csv", rows)
    print(text)


def plot(rows, labels, baseline, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for row in rows:
        if "early-stopped" in row["model"]:
            continue
        ax.plot(labels, [row[label] for label in labels], "o-", label=row["model"])
    ax.axhline(0.0, color="grey", lw=0.8)
    ax.set_xlabel("training items per user (bucket)")
    ax.set_ylabel(f"GAUC gain over {baseline}")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()

"""GBR qualitative view (ReaSeq Figure 6 analogue) from a stored augmentation.

* Figure 6a analogue (Markdown): for a few real users (seeded pick among users with 2-4 located
  gaps), the observed items around each [FILL] with their titles, and the real items nearest to
  the filled vector (cosine in the frozen representation space the reasoner was trained on).
* Figure 6b analogue (PNG): a 2-D PCA projection of the user's real item vectors and filled
  vectors for two users, the sequence drawn in time order.

    python benchmarks/gbr_qualitative.py --dataset amazon-beauty --variant GBR-C-0
    -> benchmarks/results/gbr_qualitative_<dataset>_<variant>.md and .png
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)
from recbole_reaseq.data.datasets import dataset_dir, read_atomic  # noqa: E402
from recbole_reaseq.gbr.augment import augmentation_paths  # noqa: E402
from recbole_reaseq.knowledge.pipeline import artifact_paths  # noqa: E402


def load(dataset: str, variant: str, artifact_dir: str):
    npz_path, manifest_path = augmentation_paths(dataset, variant, artifact_dir)
    if not os.path.isfile(npz_path):
        raise FileNotFoundError(f"{npz_path} is missing. Fix: python -m recbole_reaseq.gbr all "
                                f"--dataset {dataset} (with the variant's --rule/--loss)")
    z = dict(np.load(npz_path))
    manifest = json.loads(open(manifest_path, encoding="utf-8").read())
    field = manifest.get("key", {}).get("knowledge_field") or "knowledge_emb"
    paths = artifact_paths(dataset, artifact_dir)
    ids = json.loads(paths.ids("knowledge_emb").read_text(encoding="utf-8"))
    emb = np.load(paths.npy("knowledge_emb")).astype(np.float32)
    if manifest.get("center_repr"):      # the reasoner worked on the centred table: compare there
        from recbole_reaseq.model.item_repr import center_rows

        emb = center_rows(emb)
    emb /= np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    return z, manifest, field, ids, emb


def geometry(emb: np.ndarray, fills: np.ndarray, n: int = 2000, seed: int = 0) -> dict:
    """Where the filled vectors lie relative to the real items (unit rows, same space).

    ``mean_dir_*``: mean cosine with the catalogue's mean item direction; ``nn_*``: mean cosine
    with the nearest real item (for an item: the nearest OTHER item); ``distinct_nn``: share of
    distinct nearest items among the sampled fills (1 = every fill points somewhere else).
    """
    rng = np.random.default_rng(seed)
    f = fills[rng.choice(len(fills), size=min(n, len(fills)), replace=False)]
    f = f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)        # [F, D]
    items = emb[rng.choice(len(emb), size=min(n, len(emb)), replace=False)]     # [I, D]
    mean = emb.mean(0)
    mean /= max(np.linalg.norm(mean), 1e-12)
    fill_sims = f @ emb.T                                                       # [F, N]
    item_sims = items @ emb.T                                                   # [I, N]
    item_sims[item_sims > 1 - 1e-6] = -1.0                                      # not itself
    return {"mean_dir_fill": float((f @ mean).mean()),
            "mean_dir_item": float((items @ mean).mean()),
            "nn_fill": float(fill_sims.max(1).mean()), "nn_item": float(item_sims.max(1).mean()),
            "distinct_nn": len(set(fill_sims.argmax(1).tolist())) / len(f), "n": len(f)}


def titles(dataset: str) -> dict:
    folder = dataset_dir(dataset)
    item = read_atomic(os.path.join(folder, f"{dataset}.item"))
    text = "title" if "title" in item.columns else ("movie_title" if "movie_title" in item.columns
                                                     else item.columns[1])
    return dict(zip(item["item_id"].astype(str), item[text].fillna("").astype(str)))


def short(text: str, n: int = 70) -> str:
    text = " ".join(text.split()).replace("|", "/")
    return text if len(text) <= n else text[:n - 1] + "…"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default="amazon-beauty")
    parser.add_argument("--variant", default="GBR-C-0")
    parser.add_argument("--artifact-dir", dest="artifact_dir", default=os.path.join(REPO, "artifacts"))
    parser.add_argument("--users", type=int, default=4)
    parser.add_argument("--neighbours", type=int, default=5)
    parser.add_argument("--seed", type=int, default=2020)
    args = parser.parse_args(argv)

    z, manifest, field, ids, emb = load(args.dataset, args.variant, args.artifact_dir)
    row = {t: i for i, t in enumerate(ids)}
    name = titles(args.dataset)
    n_gaps = np.diff(z["gap_offsets"])
    n_items = np.diff(z["item_offsets"])
    pool = np.flatnonzero((n_gaps >= 2) & (n_gaps <= 4) & (n_items <= 15))
    rng = np.random.default_rng(args.seed)
    picked = rng.choice(pool, size=min(args.users, len(pool)), replace=False)

    lines = [f"# GBR qualitative view: {args.dataset}, {args.variant}", "",
             f"Augmentation `{os.path.relpath(augmentation_paths(args.dataset, args.variant, args.artifact_dir)[0], REPO)}`"
             f" ({len(z['users'])} users, {len(z['fills'])} filled vectors); representation "
             f"`{field}` (L2-normalised); users picked with seed {args.seed} among those with "
             "2-4 located gaps and <= 15 training items. A [FILL] sits between the items before "
             "and after it; its nearest real items are by cosine over all items. `(in history)` "
             "marks a neighbour the user actually has in the training sequence; `(later)` one "
             "the user interacts with after the gap.", ""]
    geo = geometry(emb, z["fills"], seed=args.seed)
    lines += [f"Geometry ({geo['n']} sampled fills and items, same space"
              + (", centred representations" if manifest.get("center_repr") else "") + "): "
              f"cosine with the catalogue's mean item direction {geo['mean_dir_fill']:.3f} for "
              f"fills vs {geo['mean_dir_item']:.3f} for real items; cosine with the nearest real "
              f"item {geo['nn_fill']:.3f} for fills vs {geo['nn_item']:.3f} for real items (nearest "
              f"other item); distinct nearest items among the fills: "
              f"{geo['distinct_nn']:.1%}.", ""]
    plotted = []
    for u in picked:
        items = z["items"][z["item_offsets"][u]:z["item_offsets"][u + 1]].astype(str)
        gaps = z["gap_pos"][z["gap_offsets"][u]:z["gap_offsets"][u + 1]]
        fills = z["fills"][z["gap_offsets"][u]:z["gap_offsets"][u + 1]]
        lines += [f"## user {z['users'][u]} ({len(items)} training items, {len(gaps)} gaps)", ""]
        lines += ["Sequence: " + " → ".join(
            f"**{i}** {short(name.get(t, ''), 40)}" + (" **[FILL]**" if i in set(gaps.tolist())
                                                          else "")
            for i, t in enumerate(items)), ""]
        for g, vec in zip(gaps.tolist(), fills):
            sims = emb @ vec
            top = np.argsort(-sims)[:args.neighbours]
            lines += [f"[FILL] after position {g}: between *{short(name.get(items[g], ''))}* and "
                      f"*{short(name.get(items[g + 1], ''))}*", "",
                      "| rank | nearest real item | cosine | note |", "|---|---|---|---|"]
            later = set(items[g + 1:].tolist())
            mine = set(items.tolist())
            for r, j in enumerate(top, 1):
                note = "(later)" if ids[j] in later else ("(in history)" if ids[j] in mine else "")
                lines.append(f"| {r} | {short(name.get(ids[j], ids[j]))} | {sims[j]:.3f} | {note} |")
            own = [float(emb[row[t]] @ vec) for t in (items[g], items[g + 1]) if t in row]
            lines += ["", "cosine to the items around it: " + ", ".join(f"{c:.3f}" for c in own),
                      ""]
        if len(plotted) < 2:
            plotted.append((z["users"][u], items, gaps, fills))
    out = os.path.join(HERE, "results", f"gbr_qualitative_{args.dataset}_{args.variant}")
    with open(out + ".md", "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    plot(plotted, row, emb, out + ".png", args.variant)
    print("\n".join(lines))


def plot(users, row, emb, path, variant):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(users), figsize=(6 * len(users), 5))
    axes = np.atleast_1d(axes)
    for ax, (user, items, gaps, fills) in zip(axes, users):
        real = np.stack([emb[row[t]] for t in items])                     # [n, D]
        # time order with the fills inserted after their gap positions
        seq, kinds = [], []
        f = 0
        for i in range(len(items)):
            seq.append(real[i])
            kinds.append("item")
            while f < len(gaps) and gaps[f] == i:
                seq.append(fills[f])
                kinds.append("fill")
                f += 1
        x = np.stack(seq)
        centred = x - x.mean(0)
        _u, _s, vt = np.linalg.svd(centred, full_matrices=False)
        xy = centred @ vt[:2].T                                            # [n + g, 2]
        ax.plot(xy[:, 0], xy[:, 1], "-", color="lightgrey", zorder=1)
        for k, (p, kind) in enumerate(zip(xy, kinds)):
            ax.scatter(*p, marker="*" if kind == "fill" else "o", s=160 if kind == "fill" else 60,
                       color="tab:red" if kind == "fill" else "tab:blue", zorder=2)
            ax.annotate(str(k), p, textcoords="offset points", xytext=(4, 4), fontsize=8)
        ax.set_title(f"user {user}: items (o) and {variant} fills (*), PCA")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()

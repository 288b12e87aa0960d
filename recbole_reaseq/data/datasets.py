"""Where data sets live, what their item metadata fields are called, and their vital statistics."""
from __future__ import annotations

import hashlib
import os

import numpy as np
import pandas as pd

from recbole_reaseq.config import EMBEDDED_DATASETS, resolve_data_path

# Which atomic-file column plays which role in item metadata (used by stats and the knowledge
# pipeline). Data sets not listed here use RecBole-style defaults.
ITEM_META_FIELDS = {
    "amazon-beauty": {"title": "title", "category": "categories", "brand": "brand",
                      "price": "price"},
    "ml-100k": {"title": "movie_title", "category": "class", "brand": None, "price": None},
}
DEFAULT_META_FIELDS = {"title": "title", "category": "categories", "brand": "brand",
                       "price": "price"}


def dataset_dir(dataset: str, data_path: str | None = None) -> str:
    """Folder holding ``<dataset>.inter`` (RecBole's embedded copy for ml-100k)."""
    if dataset in EMBEDDED_DATASETS:
        import recbole

        return os.path.join(os.path.dirname(recbole.__file__), "dataset_example", dataset)
    return os.path.join(resolve_data_path(dataset, data_path), dataset)


def read_atomic(path: str, usecols: list[str] | None = None) -> pd.DataFrame:
    """Read a RecBole atomic file; columns are renamed from ``name:type`` to ``name``."""
    df = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False, na_values=[""],
                     quoting=3, engine="c")
    df.columns = [c.split(":")[0] for c in df.columns]
    if usecols is not None:
        missing = [c for c in usecols if c not in df.columns]
        if missing:
            raise KeyError(f"{path} has no column(s) {missing}; it has {list(df.columns)}")
        df = df[usecols]
    return df


def file_sha256(path: str, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def dataset_stats(dataset: str, data_path: str | None = None) -> dict:
    """Users, items, interactions, sequence lengths and metadata coverage of the raw files.

    Coverage is the share of items that occur in the ``.inter`` file and have a non-empty field.
    """
    folder = dataset_dir(dataset, data_path)
    inter = read_atomic(os.path.join(folder, f"{dataset}.inter"), ["user_id", "item_id"])
    lengths = inter.groupby("user_id").size().to_numpy()
    items = pd.Index(inter["item_id"].unique())
    stats = {
        "dataset": dataset,
        "users": int(len(lengths)),
        "items": int(len(items)),
        "interactions": int(len(inter)),
        "mean_length": float(lengths.mean()),
        "median_length": float(np.median(lengths)),
        "p99_length": float(np.percentile(lengths, 99)),
        "max_length": int(lengths.max()),
        "density": float(len(inter) / (len(lengths) * len(items))),
    }
    item_file = os.path.join(folder, f"{dataset}.item")
    fields = ITEM_META_FIELDS.get(dataset, DEFAULT_META_FIELDS)
    meta = read_atomic(item_file) if os.path.isfile(item_file) else pd.DataFrame(
        {"item_id": []})
    meta = meta.drop_duplicates("item_id").set_index("item_id").reindex(items)
    for role in ("title", "category", "brand", "price"):
        column = fields.get(role)
        if column and column in meta.columns:
            present = meta[column].notna() & (meta[column].astype(str).str.strip() != "")
            stats[f"pct_items_with_{role}"] = float(100.0 * present.mean())
        else:
            stats[f"pct_items_with_{role}"] = 0.0
    return stats


def format_stats(stats: dict) -> str:
    lines = [f"{k}: {v:,.4f}" if isinstance(v, float) else f"{k}: {v:,}" if isinstance(v, int)
             else f"{k}: {v}" for k, v in stats.items()]
    return "\n".join(lines)


if __name__ == "__main__":  # python -m recbole_reaseq.data.datasets amazon-beauty
    import argparse

    parser = argparse.ArgumentParser(description="Vital statistics of a RecBole data set.")
    parser.add_argument("dataset")
    parser.add_argument("--data_path", default=None)
    args = parser.parse_args()
    print(format_stats(dataset_stats(args.dataset, args.data_path)))

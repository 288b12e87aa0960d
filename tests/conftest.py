"""Shared fixtures: a tiny synthetic data set in RecBole atomic format (Beauty's schema)."""
from __future__ import annotations

import os

import numpy as np
import pytest

import recbole_reaseq  # noqa: F401  (compat first)

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_DATA = os.path.abspath(os.path.join(REPO_ROOT, "..", "shared", "datasets"))
BEAUTY = os.path.join(SHARED_DATA, "amazon-beauty", "amazon-beauty.inter")

needs_beauty = pytest.mark.skipif(
    not os.path.isfile(BEAUTY),
    reason=f"amazon-beauty not found at {BEAUTY} (CI has ../shared beside the clone)")


ITEM_HEADER = "item_id:token\ttitle:token_seq\tcategories:token_seq\tbrand:token\tprice:float"
INTER_HEADER = "user_id:token\titem_id:token\ttimestamp:float"


def write_atomic_dataset(root, name: str, item_rows, inter_rows):
    """Write ``<root>/<name>/<name>.item`` and ``.inter`` (Beauty's schema); returns ``root``."""
    folder = os.path.join(str(root), name)
    os.makedirs(folder, exist_ok=True)
    for suffix, header, rows in (("item", ITEM_HEADER, item_rows),
                                 ("inter", INTER_HEADER, inter_rows)):
        with open(os.path.join(folder, f"{name}.{suffix}"), "w", encoding="utf-8") as f:
            f.write(header + "\n")
            f.writelines("\t".join(str(v) for v in row) + "\n" for row in rows)
    return root


def write_tiny_dataset(root: str, name: str = "tiny", n_users: int = 60, n_items: int = 40,
                       seed: int = 0) -> str:
    """Users walk item 'chains' (i -> i+1 mostly) so that next-item prediction is learnable."""
    rng = np.random.default_rng(seed)
    folder = os.path.join(root, name)
    os.makedirs(folder, exist_ok=True)
    rows = []
    for u in range(1, n_users + 1):
        length = int(rng.integers(5, 16))
        item = int(rng.integers(1, n_items + 1))
        t = 1_000_000 + int(rng.integers(0, 1000)) * 86400
        for _ in range(length):
            rows.append((f"u{u}", f"i{item}", t))
            item = item % n_items + 1 if rng.random() < 0.8 else int(rng.integers(1, n_items + 1))
            t += int(rng.integers(0, 5)) * 86400
    with open(os.path.join(folder, f"{name}.inter"), "w") as f:
        f.write("user_id:token\titem_id:token\ttimestamp:float\n")
        f.writelines(f"{u}\t{i}\t{t}\n" for u, i, t in rows)
    cats = ["Makeup", "Skin_Care", "Hair_Care", "Fragrance"]
    with open(os.path.join(folder, f"{name}.item"), "w") as f:
        f.write("item_id:token\ttitle:token_seq\tcategories:token_seq\tbrand:token\tprice:float\n")
        for i in range(1, n_items + 1):
            f.write(f"i{i}\tItem {i} cream 8 oz\tBeauty {cats[i % 4]} Sub{i % 3}\tbrand{i % 5}"
                    f"\t{5 + i}\n")
    return folder


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory) -> str:
    root = str(tmp_path_factory.mktemp("datasets"))
    write_tiny_dataset(root)
    return root


def tiny_config(tiny_root: str, workdir: str, **overrides) -> dict:
    """Config dict for a one-epoch run of a small model on the tiny data set."""
    config = {
        "data_path": tiny_root,
        "load_col": {"inter": ["user_id", "item_id", "timestamp"],
                     "item": ["item_id", "categories", "brand", "price"]},
        "MAX_ITEM_LIST_LENGTH": 10,
        "epochs": 1, "train_batch_size": 64, "eval_batch_size": 32,
        "hidden_size": 16, "inner_size": 32, "embedding_size": 16, "n_layers": 1, "n_heads": 1,
        "mlp_hidden_size": [16], "checkpoint_dir": os.path.join(workdir, "saved"),
        "reaseq_artifact_dir": os.path.join(workdir, "artifacts"),
        "state": "WARNING", "ctr_num_negatives": 9,
    }
    config.update(overrides)
    return config


@pytest.fixture()
def workdir(tmp_path, monkeypatch) -> str:
    """Run in a temp dir so RecBole's ./log and ./saved never land in the checkout."""
    monkeypatch.chdir(tmp_path)
    return str(tmp_path)

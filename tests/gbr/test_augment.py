"""Stored augmentation: fill windows, exact fill vectors, manifest, stale detection, leakage."""
from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from recbole_reaseq.gbr.augment import (StaleAugmentationError, augment, augmentation_paths,
                                        fill_windows, load_augmentation)
from recbole_reaseq.gbr.reasoner import FILL, build_sequence, collate, fill_predictions
from recbole_reaseq.gbr.train import load_reasoner, prepare, train
from tests.gbr import single_thread  # noqa: F401  (fixture)

from .gbr_helpers import artifact_copy, tiny_gbr


def test_fill_windows_by_hand():
    # tokens: x0 F x1 x2 F x3 x4 (gaps after x0 and x2): [FILL] tokens at 1 and 4
    assert fill_windows(5, np.array([0, 2]), 10, "prefix") == [(0, 3, [(0, 1)]), (0, 6, [(1, 4)])]
    assert fill_windows(5, np.array([0, 2]), 10, "full") == [(0, 7, [(0, 1), (1, 4)])]
    # max_len 3: the second window keeps its last 3 tokens x2 F x3
    assert fill_windows(5, np.array([0, 2]), 3, "prefix") == [(0, 3, [(0, 1)]), (3, 6, [(1, 1)])]
    # full, longer than max_len: a window of max_len tokens around each gap
    assert fill_windows(5, np.array([0, 2]), 4, "full") == [(0, 4, [(0, 1)]), (3, 7, [(1, 1)])]
    assert fill_windows(3, np.zeros(0, np.int64), 4, "prefix") == []


@pytest.fixture(scope="module")
def built(tiny_root, tmp_path_factory):
    folder = artifact_copy(tiny_root, tmp_path_factory, "augment")
    prep = prepare(tiny_gbr(tiny_root, folder, epochs=2))
    train(prep)
    return prep, augment(prep)


def test_fills_are_the_reasoner_outputs_at_fill_with_prefix_context(built):
    prep, manifest = built
    assert manifest["status"] == "built" and manifest["context"] == "prefix"
    npz, _ = augmentation_paths("tiny", "GBR-C-0", prep.cfg.artifact_dir)
    z = np.load(npz)
    ex = prep.inputs.examples
    assert manifest["gaps"] == len(z["gap_pos"]) == sum(len(x.fill_after) for x in ex) > 0
    assert np.allclose(np.linalg.norm(z["fills"], axis=1), 1.0, atol=1e-5)
    model, _ = load_reasoner(prep)
    u = next(r for r, x in enumerate(ex) if len(x.fill_after) >= 2)
    x = ex[u]
    g0 = int(z["gap_offsets"][u])
    assert z["gap_pos"][g0:g0 + len(x.fill_after)].tolist() == x.fill_after.tolist()
    lo, hi = z["item_offsets"][u], z["item_offsets"][u + 1]
    assert z["items"][lo:hi].tolist() == [str(t) for t in prep.data.item_tokens[x.items]]
    for j, i in enumerate(x.fill_after.tolist()):
        # by hand: the sequence up to x_{i+1}, [FILL] at every earlier gap, items all shown
        ids, kinds, _ = build_sequence(x.items[:i + 2], x.fill_after[x.fill_after <= i], ())
        pred = fill_predictions(model, collate([(ids, kinds, np.zeros(len(ids), bool))]))
        pos = int(np.flatnonzero(kinds == FILL)[-1])
        expected = F.normalize(pred[0, pos], dim=-1).numpy()
        assert np.allclose(z["fills"][g0 + j], expected, atol=1e-5)


def test_fresh_is_reused_and_stale_is_rebuilt(built):
    prep, manifest = built
    again = augment(prep)
    assert again["status"] == "fresh" and again["npz_sha256"] == manifest["npz_sha256"]
    npz, mpath = augmentation_paths("tiny", "GBR-C-0", prep.cfg.artifact_dir)
    with open(npz, "ab") as f:                                 # tampered file -> stale
        f.write(b"x")
    config = {"dataset": "tiny", "data_path": prep.cfg.data_path,
              "reaseq_artifact_dir": prep.cfg.artifact_dir, "gbr_rule": "C"}
    with pytest.raises(StaleAugmentationError, match="modified") as err:
        load_augmentation(config)
    assert "python -m recbole_reaseq.gbr all" in str(err.value)
    rebuilt = augment(prep)
    assert rebuilt["status"] == "built" and rebuilt["npz_sha256"] == manifest["npz_sha256"]
    prep.cfg.context = "full"                                  # another setting -> rebuilt
    try:
        full = augment(prep)
        assert full["status"] == "built" and full["key"]["context"] == "full"
    finally:
        prep.cfg.context = "prefix"
    assert augment(prep)["key"]["context"] == "prefix"
    with pytest.raises(StaleAugmentationError, match="knowledge_field"):
        load_augmentation(dict(config, knowledge_field="title_emb"))
    aug = load_augmentation(config)
    assert aug.dim == aug.fills.shape[1] and len(aug.users) == manifest["users"]


def _change_holdout(src_root: str, dst_root: str, user: str) -> None:
    """Copy the tiny data set and give ``user`` other valid/test items (its last two rows)."""
    shutil.copytree(os.path.join(src_root, "tiny"), os.path.join(dst_root, "tiny"))
    path = os.path.join(dst_root, "tiny", "tiny.inter")
    lines = open(path).read().splitlines()
    rows = [k for k, line in enumerate(lines[1:], 1) if line.split("\t")[0] == user]
    for k, item in zip(rows[-2:], ("i39", "i40")):
        u, old, t = lines[k].split("\t")
        lines[k] = "\t".join([u, item if old != item else "i38", t])
    open(path, "w").write("\n".join(lines) + "\n")


def test_no_leakage_valid_test_items_change_nothing_stored(tiny_root, built, tmp_path_factory):
    prep, _ = built
    other_root = str(tmp_path_factory.mktemp("leak_data"))
    _change_holdout(tiny_root, other_root, "u7")
    folder = artifact_copy(tiny_root, tmp_path_factory, "leak_art")
    other = prepare(tiny_gbr(other_root, folder, epochs=2))
    assert other.data_fp["inter"] != prep.data_fp["inter"]            # the data did change
    assert torch.equal(other.item_repr, prep.item_repr)
    train(other)
    augment(other)
    a = np.load(augmentation_paths("tiny", "GBR-C-0", prep.cfg.artifact_dir)[0])
    b = np.load(augmentation_paths("tiny", "GBR-C-0", folder)[0])
    for key in ("users", "item_offsets", "items", "gap_offsets", "gap_pos", "fills"):
        assert np.array_equal(a[key], b[key]), key

"""gbr_augment: exact insert / append layouts on a hand-built batch; installed on every loader."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from recbole.data.interaction import Interaction

from recbole_reaseq import registry
from recbole_reaseq.gbr.augment import Augmentation
from recbole_reaseq.gbr.transform import GBRAugment, _User
from tests.gbr import single_thread  # noqa: F401  (fixture)

FILLS = np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]], dtype=np.float32)   # rows 0, 1, 2


def _transform(mode, slots=2, attach=False):
    config = {"MAX_ITEM_LIST_LENGTH": 4, "USER_ID_FIELD": "user_id", "ITEM_ID_FIELD": "item_id",
              "LIST_SUFFIX": "_list", "ITEM_LIST_LENGTH_FIELD": "item_length",
              "dataset": "hand", "gbr_mode": mode, "gbr_fill_slots": slots,
              "gbr_attach_vectors": attach}
    aug = Augmentation(users=np.array(["a"]), item_offsets=np.array([0, 5]),
                       items=np.array(["11", "12", "13", "14", "15"]),
                       gap_offsets=np.array([0, 3]), gap_pos=np.array([0, 2, 3]), fills=FILLS,
                       manifest={})
    t = GBRAugment(config, augmentation=aug)
    # user 1: full sequence 11..17 (RecBole ids); training view = first 5 items; gaps after
    # x0 (fill row 0), x2 (row 1) and x3 (row 2)
    t.users = {1: _User(np.arange(11, 18), 5, np.array([0, 2, 3]), 0)}
    return t


def _batch():
    # A: prefix k=3 -> gap 0 only (gap 2 sits right before the target x3 = 14: never used)
    # B: full window x1..x4, target 16 -> k=5 (the valid row): gaps 2, 3
    # C: full window x2..x5, target 17 -> k=6 (the test row; x5 is the valid item): gaps 2, 3
    # D: full window x0..x3, target 15 -> k=4: gaps 0, 2 (gap 3 precedes the target)
    # E: a user without augmentation
    seq = torch.tensor([[11, 12, 13, 0], [12, 13, 14, 15], [13, 14, 15, 16], [11, 12, 13, 14],
                        [5, 6, 0, 0]])
    return Interaction({"user_id": torch.tensor([1, 1, 1, 1, 2]), "item_id_list": seq,
                        "item_length": torch.tensor([3, 4, 4, 4, 2]),
                        "item_id": torch.tensor([14, 16, 17, 15, 7])})


def test_insert_layout_exact():
    out = _transform("insert")(None, _batch())
    assert out["gbr_items"].tolist() == [
        [11, 0, 12, 13, 0, 0], [12, 13, 0, 14, 0, 15], [13, 0, 14, 0, 15, 16],
        [11, 0, 12, 13, 0, 14], [5, 6, 0, 0, 0, 0]]
    assert out["gbr_fill_index"].tolist() == [
        [0, 1, 0, 0, 0, 0], [0, 0, 2, 0, 3, 0], [0, 2, 0, 3, 0, 0],
        [0, 1, 0, 0, 2, 0], [0] * 6]
    assert out["gbr_length"].tolist() == [4, 6, 6, 6, 2]
    assert torch.equal(out["gbr_is_fill"], out["gbr_fill_index"] > 0)
    assert out["item_id_list"].tolist()[0] == [11, 12, 13, 0]          # originals untouched


def test_append_layout_exact():
    out = _transform("append")(None, _batch())
    assert out["gbr_items"].tolist() == [
        [11, 12, 13, 0, 0, 0], [12, 13, 14, 15, 0, 0], [13, 14, 15, 16, 0, 0],
        [11, 12, 13, 14, 0, 0], [5, 6, 0, 0, 0, 0]]
    assert out["gbr_fill_index"].tolist() == [
        [0, 0, 0, 1, 0, 0], [0, 0, 0, 0, 2, 3], [0, 0, 0, 0, 2, 3],
        [0, 0, 0, 0, 1, 2], [0] * 6]
    assert out["gbr_length"].tolist() == [4, 6, 6, 6, 2]


def test_fill_slots_keep_the_most_recent_fills_and_vectors_attach():
    out = _transform("insert", slots=1, attach=True)(None, _batch())
    assert out["gbr_items"][1].tolist() == [12, 13, 14, 0, 15]          # only gap 3 (row 2)
    assert out["gbr_fill_index"][1].tolist() == [0, 0, 0, 3, 0]
    assert out["gbr_fills"].shape == (5, 5, 2)
    assert torch.allclose(out["gbr_fills"][1, 3], torch.tensor([0.6, 0.8]))
    assert torch.equal(out["gbr_fills"][1, :3], torch.zeros(3, 2))
    none = _transform("append", slots=0)(None, _batch())
    assert none["gbr_fill_index"].sum() == 0 and none["gbr_length"].tolist() == [3, 4, 4, 4, 2]


def test_unknown_window_and_bad_config_raise_clear_errors():
    t = _transform("insert")
    bad = _batch()
    bad.interaction["item_id"] = torch.tensor([14, 9, 17, 15, 7])        # no such window+target
    with pytest.raises(ValueError, match="does not match this data set"):
        t(None, bad)
    with pytest.raises(ValueError, match="gbr_mode"):
        GBRAugment({"gbr_mode": "middle"})
    assert registry.get_transform("gbr_augment") is GBRAugment

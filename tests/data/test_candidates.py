import json
import os

import numpy as np
import pandas as pd
import pytest

from recbole_reaseq.config import default_time_normalized, time_normalized
from recbole_reaseq.data.candidates import (candidate_file, cold_threshold,
                                            leave_one_out_positions, load_or_build_candidates,
                                            recbole_time_key, sample_negatives, time_order_note)
from recbole_reaseq.quick_start import make_config, prepare_data
from tests.conftest import BEAUTY, needs_beauty, tiny_config


def test_leave_one_out_stable_ties():
    uids = np.array([2, 1, 2, 1, 2, 1])
    times = np.array([5, 3, 5, 1, 1, 3])      # user 1 rows 1 and 5 tie at t=3: file order kept
    order, starts, ends = leave_one_out_positions(uids, times)
    assert order.tolist() == [3, 1, 5, 4, 0, 2]
    assert starts.tolist() == [0, 3] and ends.tolist() == [3, 6]


def test_recbole_time_key_ties_distinct_timestamps_like_recbole():
    # (t - 0) / 2e9 in float64, then float32: 1e9 and 1e9 + 1 both become exactly 0.5
    times = np.array([2e9, 1e9 + 1, 0.0, 1e9])
    key = recbole_time_key(times, normalize=True)
    assert key.dtype == np.float32 and key.tolist() == [1.0, 0.5, 0.0, 0.5]
    uids = np.zeros(4, dtype=np.int64)
    assert leave_one_out_positions(uids, key)[0].tolist() == [2, 1, 3, 0]     # tie: file order
    assert leave_one_out_positions(uids, times)[0].tolist() == [2, 3, 1, 0]   # raw order
    assert time_order_note(uids, times, True) == {"time_order": "recbole-float32-normalized"}
    # the caller's own sort by RecBole's key gives the same note; the raw order gives none
    assert time_order_note(uids, times, True, order=np.array([2, 1, 3, 0])) == {
        "time_order": "recbole-float32-normalized"}
    assert time_order_note(uids, times, True, order=np.array([2, 3, 1, 0])) == {}
    # unnormalised: float32 spacing is 128 s around 1e9, so 1e9 and 1e9 + 1 tie as well
    assert recbole_time_key(times, normalize=False).tolist() == [2e9, 1e9, 0.0, 1e9]
    assert time_order_note(uids, times, False) == {"time_order": "recbole-float32"}
    # day-resolution timestamps (amazon-beauty) are exact in float32: same order, no entry
    days = np.array([1.3e9 + 86400 * d for d in (3, 1, 2, 1)])
    assert time_order_note(uids, days, False) == {} and time_order_note(uids, days, True) == {}
    assert recbole_time_key(np.array([5.0, 5.0]), normalize=True).tolist() == [1.0, 1.0]


def test_time_normalized_reads_normalize_field_then_normalize_all():
    assert time_normalized({"normalize_all": True}) is True
    assert time_normalized({"normalize_all": None}) is False
    assert time_normalized({"normalize_field": ["rating"], "normalize_all": True,
                            "TIME_FIELD": "timestamp"}) is False
    assert time_normalized({"normalize_field": ["timestamp"], "TIME_FIELD": "timestamp"}) is True
    assert default_time_normalized("ml-100k") is True      # RecBole's own ml-100k.yaml


@pytest.mark.parametrize("lengths,fraction,expected", [
    ([1, 2, 3, 4, 5, 6], 1 / 3, 2),
    ([3, 3, 3, 4, 5, 6], 1 / 3, 3),      # ties never split; at least the minimum level
    ([3, 3, 4, 4, 5, 6, 7, 8, 9], 1 / 3, 3),
    ([1, 1, 2, 9], 0.5, 1),
])
def test_cold_threshold(lengths, fraction, expected):
    assert cold_threshold(np.array(lengths), fraction) == expected


def test_sample_negatives_excludes_user_items():
    user_items = [np.array([1, 2, 3]), np.array([4, 5]), np.array([], dtype=int)]
    neg = sample_negatives(user_items, n_items=11, n_neg=6, seed=7)
    assert neg.shape == (3, 6)
    for items, row in zip(user_items, neg):
        assert len(set(row)) == 6 and not set(row) & set(items.tolist())
        assert row.min() >= 1 and row.max() <= 10
    assert np.array_equal(neg, sample_negatives(user_items, 11, 6, seed=7))
    assert not np.array_equal(neg, sample_negatives(user_items, 11, 6, seed=8))
    with pytest.raises(ValueError, match="ctr_num_negatives"):
        sample_negatives([np.arange(1, 8)], n_items=11, n_neg=4, seed=0)


@pytest.fixture()
def tiny_data(tiny_root, workdir):
    config = make_config("SASRec", "tiny", config_dict=tiny_config(tiny_root, workdir,
                                                                   eval_protocol="ctr"))
    dataset, train, valid, test = prepare_data(config)
    return config, dataset, train, valid, test


def test_candidates_stored_reused_and_valid(tiny_data):
    config, dataset, _train, valid, test = tiny_data
    first = load_or_build_candidates(config, dataset)
    base = candidate_file(config)
    assert os.path.isfile(base + ".npz") and os.path.isfile(base + ".json")
    mtime = os.path.getmtime(base + ".npz")
    second = load_or_build_candidates(config, dataset)
    assert os.path.getmtime(base + ".npz") == mtime                # reused, not rebuilt
    for name in ("user_ids", "valid_pos", "test_pos", "negatives", "train_len", "cold"):
        assert np.array_equal(getattr(first, name), getattr(second, name))
    n_users = dataset.user_num - 1
    assert first.negatives.shape == (n_users, 9)
    # no positive and no interacted item among the negatives
    inter = dataset.inter_feat
    seen = pd.DataFrame({"u": inter["user_id"].numpy(), "i": inter["item_id"].numpy()})
    items_of = seen.groupby("u")["i"].apply(set).to_dict()
    rows_of = seen.groupby("u").size().to_dict()
    for row, uid in enumerate(first.user_ids):
        negs = set(first.negatives[row].tolist())
        assert len(negs) == 9 and not negs & items_of[int(uid)]
        assert rows_of[int(uid)] == first.train_len[row] + 2
    # positives are exactly RecBole's leave-one-out targets
    for loader, pos in ((valid, first.valid_pos), (test, first.test_pos)):
        rows = first.rows(loader._dataset.inter_feat["user_id"].numpy())
        assert np.array_equal(pos[rows], loader._dataset.inter_feat["item_id"].numpy())


def test_segments_are_the_least_active_third(tiny_data):
    config, dataset, *_ = tiny_data
    cands = load_or_build_candidates(config, dataset)
    cut = cold_threshold(cands.train_len, config["ctr_cold_fraction"])
    assert np.array_equal(cands.cold, cands.train_len <= cut)
    assert cands.cold.mean() <= 1 / 3 + 1e-9
    assert cands.info["cold_users"] == int(cands.cold.sum())


def test_stale_candidates_rebuilt(tiny_data, caplog):
    config, dataset, *_ = tiny_data
    first = load_or_build_candidates(config, dataset)
    manifest = candidate_file(config) + ".json"
    data = json.load(open(manifest))
    data["inter_sha256"] = "0" * 64
    json.dump(data, open(manifest, "w"))
    again = load_or_build_candidates(config, dataset)
    assert "stale" in caplog.text
    assert json.load(open(manifest))["inter_sha256"] != "0" * 64
    assert np.array_equal(first.negatives, again.negatives)     # same seed, same sets


@needs_beauty
def test_beauty_cold_segment_is_32_percent():
    inter = pd.read_csv(BEAUTY, sep="\t")
    uids = pd.factorize(inter["user_id:token"])[0]
    order, starts, ends = leave_one_out_positions(uids, inter["timestamp:float"].to_numpy())
    train_len = ends - starts - 2
    cut = cold_threshold(train_len, 1 / 3)
    assert cut == 3
    assert round(float(np.mean(train_len <= cut)), 4) == 0.3203

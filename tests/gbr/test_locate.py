"""Stage-1 rules, the time threshold, missing fields, category labels, Swing and stage 2."""
from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch

from tests.gbr import single_thread  # noqa: F401  (fixture)
from recbole_reaseq.gbr.locate import (RULES, TABLE5_RULES, CallableScorer, MissingFieldError,
                                       SequenceData, SwingScorer, category_label, cd_positions,
                                       default_time_threshold, load_sequences, locate_gaps,
                                       next_item_ranks, recbole_sequential_scorer,
                                       stage1_positions, stage2_filter, swing_similarity,
                                       td_positions, time_gaps)

# gaps:             10   0   90   5   195        (threshold 50: TD at 2 and 4)
TIMES = np.array([0., 10., 10., 100., 105., 300.])
CATS = np.array([0, 0, 1, 1, 1, 2])              # A A B B B C: CD at 1 and 4


def test_td_cd_and_table5_rules_on_a_hand_built_sequence():
    assert td_positions(TIMES, 50).tolist() == [2, 4]
    assert cd_positions(CATS).tolist() == [1, 4]
    expected = {"TD": [2, 4], "T": [2, 4], "CD": [1, 4], "C": [1, 4],
                "TDCD": [1, 2, 4],   # union
                "TC": [4]}           # the paper's coarse filter: both conditions
    for rule, positions in expected.items():
        assert stage1_positions(rule, TIMES, CATS, 50).tolist() == positions, rule
    assert set(TABLE5_RULES) <= set(RULES)


def test_td_is_strict_and_unknown_categories_never_change():
    assert td_positions(TIMES, 90).tolist() == [4]        # the gap of exactly 90 does not fire
    assert td_positions(TIMES, 195).tolist() == []
    assert cd_positions(np.array([0, -1, 1, 1, 2])).tolist() == [3]  # 0|?, ?|1 are not changes
    data = SequenceData.from_lists([[1, 2, 3, 4]], cats=[["A", None, "B", "B"]])
    assert data.cats.tolist() == [0, -1, 1, 1]


def test_positions_are_between_i_and_i_plus_1():
    # a single jump between the 3rd and 4th behaviour is position 2
    assert stage1_positions("T", np.array([0., 1., 2., 100.]), None, 10).tolist() == [2]
    assert stage1_positions("C", None, np.array([5, 5, 5, 7])).tolist() == [2]


def test_default_time_threshold_uses_positive_within_user_gaps():
    data = SequenceData.from_lists([[1, 2, 3, 4], [5, 6]], times=[[0, 0, 10, 30], [100, 140]])
    # within-user gaps: 0, 10, 20 | 40 (the 30 -> 100 boundary is not a gap); positives 10 20 40
    assert sorted(time_gaps(data).tolist()) == [0, 10, 20, 40]
    assert default_time_threshold(data, 50) == 20
    assert default_time_threshold(data, 100) == 40


def test_locate_gaps_over_users_and_stats():
    data = SequenceData.from_lists([[1, 2, 3, 4, 5, 6], [7], [1, 2]],
                                   times=[TIMES, [0], [0, 1000]],
                                   cats=[list("AABBBC"), ["A"], ["A", "A"]])
    pos, stats = locate_gaps(data, "TC", time_threshold=50)
    assert [p.tolist() for p in pos] == [[4], [], []]
    assert stats["n_pairs"] == 6 and stats["n_gaps"] == 1
    pos, _ = locate_gaps(data, "T", time_threshold=50)
    assert [p.tolist() for p in pos] == [[2, 4], [], [0]]


def test_missing_fields_raise_clear_errors():
    no_time = SequenceData.from_lists([[1, 2, 3]], cats=[["A", "B", "B"]], source="toy")
    no_cat = SequenceData.from_lists([[1, 2, 3]], times=[[0, 1, 2]], source="toy")
    for rule in ("T", "TD", "TC", "TDCD"):
        with pytest.raises(MissingFieldError, match="timestamp"):
            locate_gaps(no_time, rule, time_threshold=1)
    for rule in ("C", "CD", "TC", "TDCD"):
        with pytest.raises(MissingFieldError, match="category"):
            locate_gaps(no_cat, rule, time_threshold=1)
    with pytest.raises(MissingFieldError, match="use rule 'C'"):
        stage1_positions("T", None, np.array([0, 1]), 1)
    with pytest.raises(ValueError, match="TDCD"):
        stage1_positions("X", TIMES, CATS, 1)


def _write(folder, name, inter_header, inter_rows, item_rows=None):
    os.makedirs(os.path.join(folder, name), exist_ok=True)
    with open(os.path.join(folder, name, f"{name}.inter"), "w") as f:
        f.write("\t".join(inter_header) + "\n")
        f.writelines("\t".join(map(str, r)) + "\n" for r in inter_rows)
    if item_rows is not None:
        with open(os.path.join(folder, name, f"{name}.item"), "w") as f:
            f.write("item_id:token\ttitle:token_seq\tcategories:token_seq\n")
            f.writelines("\t".join(r) + "\n" for r in item_rows)


def test_load_sequences_orders_by_time_stably_and_labels_level_2(tmp_path):
    root = str(tmp_path)
    rows = [("u1", "b", 20), ("u2", "a", 5), ("u1", "a", 10), ("u1", "c", 20), ("u2", "c", 1)]
    items = [("a", "A", "Beauty Makeup Eyes"), ("b", "B", "Beauty Skin_Care Face"),
             ("c", "C", "Beauty Makeup Lips")]
    _write(root, "toy", ["user_id:token", "item_id:token", "timestamp:float"], rows, items)
    data = load_sequences("toy", root)
    assert data.item_tokens.tolist() == ["[PAD]", "b", "a", "c"]      # first appearance
    assert data.users.tolist() == ["u1", "u2"]
    # u1: a(10), b(20), c(20) -- the same-time tie keeps file order (b before c)
    assert [data.item_tokens[i] for i in data.sequence(0)] == ["a", "b", "c"]
    assert [data.item_tokens[i] for i in data.sequence(1)] == ["c", "a"]
    names = [data.category_names[c] for c in data.seq_cats(0)]
    assert names == ["Beauty>Makeup", "Beauty>Skin_Care", "Beauty>Makeup"]
    assert locate_gaps(data, "C")[0][0].tolist() == [0, 1]
    assert load_sequences("toy", root, category_level=3).category_names == [
        "Beauty>Makeup>Eyes", "Beauty>Makeup>Lips", "Beauty>Skin_Care>Face"]


def test_load_sequences_missing_timestamp_or_item_file_names_the_field(tmp_path):
    root = str(tmp_path)
    _write(root, "notime", ["user_id:token", "item_id:token"], [("u", "a"), ("u", "b")],
           [("a", "A", "Beauty Makeup"), ("b", "B", "Beauty Makeup")])
    data = load_sequences("notime", root)
    with pytest.raises(MissingFieldError, match=r"notime\.inter has no 'timestamp' column"):
        locate_gaps(data, "T")
    assert locate_gaps(data, "C")[0][0].tolist() == []
    _write(root, "noitem", ["user_id:token", "item_id:token", "timestamp:float"],
           [("u", "a", 1), ("u", "b", 2)])
    with pytest.raises(MissingFieldError, match=r"noitem\.item .*does not exist"):
        locate_gaps(load_sequences("noitem", root), "C")


def test_category_label_rules():
    assert category_label("Beauty Hair_Care Styling_Products", 2) == "Beauty>Hair_Care"
    assert category_label("Beauty Hair_Care", 4) == "Beauty>Hair_Care"   # shorter: whole path
    assert category_label("", 2) is None and category_label(None, 2) is None
    # ml-100k: genre list under the root "Movies": level 2 = first listed genre
    assert category_label("Action Adventure Thriller", 2, root="Movies") == "Movies>Action"
    with pytest.raises(ValueError):
        category_label("Beauty", 0)


def test_ml100k_category_is_the_first_genre():
    data = load_sequences("ml-100k")
    toy_story = int(np.flatnonzero(data.item_tokens == "1")[0])        # Animation Children's Comedy
    flat = int(np.flatnonzero(data.items == toy_story)[0])
    assert data.category_names[data.cats[flat]] == "Movies>Animation"
    assert data.times is not None and len(data) == 943


def test_ml100k_sequences_follow_recbole_history_order(monkeypatch):
    # RecBole normalises ml-100k's timestamps to float32 in [0, 1], where 164 distinct timestamps
    # tie and keep file order; every RecBole history window and target must be GBR's sequence
    from recbole.data import create_dataset
    from recbole_reaseq.config import Config
    from recbole_reaseq.gbr import locate

    config = Config(model="DIN", dataset="ml-100k", argv=[])
    ds = create_dataset(config)
    ds._change_feat_format()                # SequentialDataset: one (window, target) row each
    feat, max_len = ds.inter_feat, config["MAX_ITEM_LIST_LENGTH"]
    users = ds.id2token(ds.uid_field, feat[ds.uid_field].numpy())
    targets = ds.id2token(ds.iid_field, feat[ds.iid_field].numpy())
    windows, lengths = feat["item_id_list"].numpy(), feat["item_length"].numpy()
    assert len(feat) == 100000 - 943

    def mismatched_rows(data):
        seqs = {str(u): data.item_tokens[data.sequence(k)].astype(str)
                for k, u in enumerate(data.users)}
        position, bad = {}, 0
        for row in range(len(feat)):
            user = str(users[row])
            j = position[user] = position.get(user, 0) + 1          # the row's target index
            window = ds.id2token(ds.iid_field, windows[row, :lengths[row]]).astype(str)
            seq = seqs[user]
            bad += bool(seq[j] != targets[row]
                        or window.tolist() != seq[max(0, j - max_len):j].tolist())
        return bad

    data = load_sequences("ml-100k")
    assert data.time_order == {"time_order": "recbole-float32-normalized"}
    assert mismatched_rows(data) == 0
    # the raw timestamps' order (GBR's before) disagrees with RecBole's histories
    monkeypatch.setattr(locate, "recbole_time_key", lambda times, normalize: times)
    assert mismatched_rows(load_sequences("ml-100k")) > 0


# ===========================================================================  Swing
# users (item SETS): u1 {1,2,3} (1 repeated), u2 {1,2}, u3 {2,3}, u4 {1,2,3}; item 4 unused
SWING_SEQS = [np.array([1, 2, 1, 3]), np.array([1, 2]), np.array([2, 3]), np.array([3, 2, 1])]


def test_swing_similarity_hand_example():
    sim = swing_similarity(SWING_SEQS, n_items=5, alpha=1.0).toarray()
    # pairs sharing >= 2 items: (u1,u2) {1,2} 1/3; (u1,u3) {2,3} 1/3; (u1,u4) {1,2,3} 1/4;
    # (u2,u4) {1,2} 1/3; (u3,u4) {2,3} 1/3
    assert sim[1, 2] == pytest.approx(1 / 3 + 1 / 4 + 1 / 3)
    assert sim[2, 3] == pytest.approx(1 / 3 + 1 / 4 + 1 / 3)
    assert sim[1, 3] == pytest.approx(1 / 4)
    assert np.allclose(sim, sim.T) and np.all(np.diag(sim) == 0)
    assert np.all(sim[4] == 0) and np.all(sim[0] == 0)
    weighted = swing_similarity(SWING_SEQS, n_items=5, alpha=1.0, user_power=0.5).toarray()
    assert weighted[1, 3] == pytest.approx((1 / math.sqrt(3)) ** 2 / 4)   # only (u1, u4)


def test_swing_scorer_raw_and_logprob():
    raw = SwingScorer.from_sequences(SWING_SEQS, 5, window=2, decay=0.5, output="raw")
    s = raw.score_next([np.array([3, 1]), np.array([], dtype=np.int64)]).numpy()
    # last item 1 (weight 1) then 3 (weight 0.5): s_j = sim(1, j) + 0.5 sim(3, j)
    assert s[0, 2] == pytest.approx(11 / 12 + 0.5 * 11 / 12)
    assert s[0, 3] == pytest.approx(1 / 4)
    assert s[0, 1] == pytest.approx(0.5 * 1 / 4)
    assert np.all(s[1] == 0)
    lp = SwingScorer.from_sequences(SWING_SEQS, 5, window=1, mix=0.1)
    out = lp.score_next([np.array([1]), np.array([], dtype=np.int64)]).numpy().astype(float)
    prior = np.array([0, 5, 5, 4, 1]) / 15          # popularity 4 4 3 0, add-one, padding 0
    share = np.array([0, 0, 11 / 12, 1 / 4, 0]) / (14 / 12)
    assert np.exp(out[0, 1:]) == pytest.approx((0.9 * share + 0.1 * prior)[1:], rel=1e-6)
    assert np.exp(out[1, 1:]) == pytest.approx(prior[1:], rel=1e-6)     # empty prefix: prior
    assert out[0, 0] == -np.inf
    assert np.exp(out[0, 1:]).sum() == pytest.approx(1.0, rel=1e-6)


# ===========================================================================  stage 2
# best-first item order after a prefix, by its last item (ids 1..5; 0 = padding)
ORDER = {1: [2, 3, 4, 5, 1], 2: [3, 5, 1, 4, 2], 4: [1, 2, 4, 5, 3], 3: [5, 1, 2, 3, 4]}


def _stub(prefixes):
    out = np.zeros((len(prefixes), 6))
    for b, p in enumerate(prefixes):
        for rank, item in enumerate(ORDER[int(p[-1])]):
            out[b, item] = -rank
        out[b, 0] = 100.0                      # padding scores highest and must be ignored
    return out


def test_next_item_ranks_ties_count_against_and_padding_is_ignored():
    scores = torch.tensor([[9.0, 1.0, 2.0, 2.0, 0.0]])
    assert next_item_ranks(scores, torch.tensor([2])).item() == 2
    assert next_item_ranks(scores, torch.tensor([3])).item() == 2
    assert next_item_ranks(scores, torch.tensor([1])).item() == 3
    assert next_item_ranks(scores, torch.tensor([4])).item() == 4


def test_stage2_filter_with_a_stub_scorer_of_known_ranks():
    scorer = CallableScorer(_stub, n_items=6)
    items = np.array([1, 2, 4, 3, 5])
    # ranks of the next item: pos 0 (1->2) 1; pos 1 (2->4) 4; pos 2 (4->3) 5; pos 3 (3->5) 1
    cand = np.array([0, 1, 2, 3])
    assert stage2_filter(items, cand, scorer, kappa=0).tolist() == [0, 1, 2, 3]
    assert stage2_filter(items, cand, scorer, kappa=1).tolist() == [1, 2]
    assert stage2_filter(items, cand, scorer, kappa=4).tolist() == [2]
    assert stage2_filter(items, cand, scorer, kappa=5).tolist() == []
    assert stage2_filter(items, np.array([3, 1]), scorer, kappa=1).tolist() == [1]
    data = SequenceData.from_lists([items], times=[[0, 100, 200, 300, 400]], n_items=6)
    pos, stats = locate_gaps(data, "T", time_threshold=50, scorer=scorer, kappa=1)
    assert pos[0].tolist() == [1, 2] and stats["n_stage1"] == 4 and stats["n_gaps"] == 2


def test_callable_scorer_checks_shape():
    with pytest.raises(ValueError, match="expected"):
        CallableScorer(lambda p: np.zeros((len(p), 3)), n_items=6).score_next([np.array([1])])


class _FakeSeqModel(torch.nn.Module):
    """RecBole-like: ITEM_SEQ / ITEM_SEQ_LEN and full_sort_predict; score = last item id * j."""

    ITEM_SEQ, ITEM_SEQ_LEN = "item_id_list", "item_length"

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.seen = []

    def full_sort_predict(self, inter):
        seq, lens = inter[self.ITEM_SEQ], inter[self.ITEM_SEQ_LEN]
        self.seen.append(seq.clone())
        last = seq.gather(1, (lens - 1).view(-1, 1)).float()            # [B, 1]
        return last * torch.arange(6).float().view(1, -1)               # [B, 6]


def test_recbole_sequential_scorer_adapter():
    model = _FakeSeqModel()
    scorer = recbole_sequential_scorer(model, n_items=6, max_len=3)
    out = scorer.score_next([np.array([1, 2, 3, 4]), np.array([], dtype=np.int64),
                             np.array([5])])
    assert out.shape == (3, 6)
    assert out[0].tolist() == [4.0 * j for j in range(6)]            # last item 4
    assert out[1].tolist() == [0.0] * 6                               # empty prefix: zeros
    assert out[2].tolist() == [5.0 * j for j in range(6)]
    assert model.seen[0].tolist() == [[2, 3, 4], [5, 0, 0]]           # left-truncated, right-padded

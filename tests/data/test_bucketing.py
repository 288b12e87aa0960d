"""Length-bucketed training batches: exact batch layout, every row once, wiring, less padding."""
import numpy as np
import pytest

from recbole_reaseq.data.bucketing import LengthBucketedLoader, bucketed_batches
from recbole_reaseq.quick_start import make_config, prepare_data, run
from tests.conftest import tiny_config


def test_bucketed_batches_hand_checked():
    lengths = np.array([5, 1, 8, 3, 2, 7, 4, 6])
    # one chunk holds all 8 rows: sorted by length, then cut in pairs
    batches = bucketed_batches(lengths, batch_size=2, chunk_batches=4,
                               rng=np.random.default_rng(0))
    assert sorted(tuple(lengths[b]) for b in batches) == [(1, 2), (3, 4), (5, 6), (7, 8)]
    # every row exactly once, whatever the chunking; batches never exceed the batch size
    for chunk_batches in (1, 2, 3):
        batches = bucketed_batches(lengths, 3, chunk_batches, np.random.default_rng(1))
        rows = np.concatenate(batches)
        assert sorted(rows.tolist()) == list(range(8)) and max(map(len, batches)) <= 3
    # chunks of one batch are random batches: the same rows in the same order as the permutation
    rng_a, rng_b = np.random.default_rng(5), np.random.default_rng(5)
    perm = rng_b.permutation(8)
    batches = bucketed_batches(lengths, 2, 1, rng_a)
    assert sorted(tuple(sorted(b)) for b in batches) == sorted(
        tuple(sorted(perm[i:i + 2])) for i in range(0, 8, 2))
    with pytest.raises(ValueError, match="chunk_batches"):
        bucketed_batches(lengths, 2, 0, np.random.default_rng(0))


def test_loader_sees_every_row_once_with_less_padding(tiny_root, workdir):
    common = dict(MAX_ITEM_LIST_LENGTH=30, reaseq_transforms=["trim_padding"],
                  train_batch_size=16)
    config = make_config("SASRec", "tiny", config_dict=tiny_config(tiny_root, workdir, **common))
    _d, plain, _v, _t = prepare_data(config)
    config_b = make_config("SASRec", "tiny", config_dict=tiny_config(
        tiny_root, workdir, length_bucketing=100, **common))
    _d, bucketed, _v, _t = prepare_data(config_b)
    assert isinstance(bucketed, LengthBucketedLoader)
    assert len(bucketed) == len(plain) and bucketed.step == plain.step   # delegated

    def epoch(loader):
        seen, cells = [], 0
        for batch in loader:
            seen += batch["item_id"].tolist()
            cells += batch["item_id_list"].numel()
            # trim_padding ran on the bucketed batch too: width = longest history + 1
            assert batch["item_id_list"].shape[1] == int(batch["item_length"].max()) + 1
        return sorted(seen), cells

    seen_plain, cells_plain = epoch(plain)
    seen_bucketed, cells_bucketed = epoch(bucketed)
    assert seen_bucketed == seen_plain                    # the same rows, each once
    assert cells_bucketed < cells_plain                   # homogeneous batches trim more
    first = [b["item_id"].tolist() for b in bucketed]
    assert bucketed.epoch == 2
    assert first != [b["item_id"].tolist() for b in bucketed]   # reshuffled every epoch


def test_run_with_bucketing_trains(tiny_root, workdir):
    result = run("SASRec", "tiny", config_dict=tiny_config(
        tiny_root, workdir, reaseq_transforms=["trim_padding"], length_bucketing=4, epochs=3,
        train_batch_size=16), saved=False)
    assert result["epochs_trained"] == 3
    assert result["train_loss"][-1] < result["train_loss"][0]

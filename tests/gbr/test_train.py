"""The resumable reasoner training loop on the tiny synthetic data set (conftest.py)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from recbole_reaseq.data.datasets import file_sha256
from recbole_reaseq.gbr import __main__ as cli
from recbole_reaseq.gbr.augment import augment, load_augmentation
from recbole_reaseq.gbr.train import (GBRConfig, evaluate_ib, prepare, train, variant_name,
                                      variant_root)
from tests.gbr import single_thread  # noqa: F401  (fixture)

from .gbr_helpers import artifact_copy, tiny_gbr


@pytest.fixture(scope="module")
def folders(tiny_root, tmp_path_factory):
    return {k: artifact_copy(tiny_root, tmp_path_factory, k) for k in ("a", "b", "c", "d")}


def _state(cfg):
    blob = torch.load(variant_root("tiny", cfg.variant, cfg.artifact_dir) / "reasoner.pt",
                      weights_only=False)
    return blob["model"]


def test_variant_names_follow_table5():
    assert variant_name("T", "softmax") == "GBR-T-0"
    assert variant_name("C", "cosine") == "GBR-C-1"
    assert variant_name("C", "euclidean") == "GBR-C-2"
    assert variant_name("TC", "softmax", "inv_t") == "GBR-TC-0-invt"
    assert variant_name("C", "softmax", center=True, tag="s15") == "GBR-C-0-ctr-s15"


def test_a_tag_names_its_own_folder_and_leaves_the_untagged_run_alone(tiny_root, folders):
    """A tagged run (here another schedule) trains in GBR-C-0-<tag>; the untagged variant's
    checkpoint is not touched, and the tag itself is not part of the run key."""
    plain = tiny_gbr(tiny_root, folders["d"], epochs=1)
    train(prepare(plain))
    plain_ckpt = variant_root("tiny", "GBR-C-0", folders["d"]) / "reasoner.pt"
    before = plain_ckpt.read_bytes()
    tagged = tiny_gbr(tiny_root, folders["d"], epochs=2, schedule_epochs=4, tag="s4")
    assert tagged.variant == "GBR-C-0-s4"
    m = train(prepare(tagged))
    assert m["status"] == "trained" and m["epochs_done"] == 2
    assert (variant_root("tiny", "GBR-C-0-s4", folders["d"]) / "reasoner.pt").is_file()
    assert plain_ckpt.read_bytes() == before
    augment(prepare(tagged))                                # a RecBole config reads it by tag
    aug = load_augmentation({"dataset": "tiny", "data_path": tiny_root,
                             "reaseq_artifact_dir": folders["d"],
                             "knowledge_field": tagged.knowledge_field,
                             "gbr_options": {"tag": "s4", "epochs": 2, "schedule_epochs": 4}})
    assert aug.path.parent.name == "GBR-C-0-s4"
    same_run = tiny_gbr(tiny_root, folders["d"], epochs=1, tag="renamed")
    assert same_run.key() == plain.key()


def test_resume_trains_only_the_missing_epoch_and_matches_an_uninterrupted_run(tiny_root,
                                                                                folders):
    one = tiny_gbr(tiny_root, folders["a"], epochs=1)
    prep = prepare(one)
    m1 = train(prep)
    assert m1["status"] == "trained" and m1["epochs_done"] == 1
    prep.cfg.epochs = 2                                      # rerun asking for 2 epochs
    m2 = train(prep)
    assert m2["status"] == "resumed" and m2["epochs_done"] == 2
    assert m2["history"][0] == m1["history"][0]              # epoch 1 was not retrained
    again = train(prep)                                      # nothing left to do
    assert again["status"] == "fresh" and again["history"] == m2["history"]
    straight = tiny_gbr(tiny_root, folders["b"], epochs=2)
    m3 = train(prepare(straight))
    a, b = _state(prep.cfg), _state(straight)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert m3["history"][1]["train_loss"] == m2["history"][1]["train_loss"]
    root = variant_root("tiny", "GBR-C-0", folders["a"])
    lines = (root / "train_log.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [1, 2]          # no duplicate after resume
    assert json.loads(lines[1]) == json.loads(json.dumps(m2["history"][1]))
    assert not list(root.glob(".*tmp*"))                              # atomic writes, no leftovers


def test_stale_checkpoint_retrains_from_scratch(tiny_root, folders):
    cfg = tiny_gbr(tiny_root, folders["a"], epochs=1, lr=1e-3)       # other lr than above
    m = train(prepare(cfg))
    assert m["status"].startswith("retrained") and "config" in m["status"]
    assert m["epochs_done"] == 1


def test_loss_falls_and_manifest_records_ratios(tiny_root, folders):
    cfg = tiny_gbr(tiny_root, folders["c"], epochs=20, schedule_epochs=20)
    prep = prepare(cfg)
    m = train(prep)
    losses = [h["train_loss"] for h in m["history"]]
    assert np.mean(losses[-3:]) < np.mean(losses[:3]) - 0.1
    for h in m["history"]:                                    # IB metrics logged every epoch
        assert h["n_mask"] > 0 and np.isfinite(h["mask_ppl"]) and 0 <= h["mask_acc"] <= 1
    ex = prep.inputs.examples
    n_items = sum(len(x.items) for x in ex)
    n_gaps = sum(len(x.fill_after) for x in ex)
    n_lab = sum(len(x.labelled) for x in ex)
    saved = json.loads((variant_root("tiny", "GBR-C-0", folders["c"])
                        / "manifest.train.json").read_text())
    assert saved["fill_ratio"] == pytest.approx(n_gaps / (n_items + n_gaps))
    assert saved["label_ratio"] == pytest.approx(n_lab / n_items)
    assert saved["data_fingerprint"]["inter"] == file_sha256(f"{tiny_root}/tiny/tiny.inter")
    assert saved["seed"] == 2020 and saved["epochs_done"] == 20
    assert saved["final_metrics"] == json.loads(json.dumps(m["history"][-1]))
    # the held-out users are never trained on
    assert not set(prep.holdout_rows) & set(prep.train_rows)


def test_ib_evaluation_is_deterministic(tiny_root, folders):
    cfg = tiny_gbr(tiny_root, folders["b"], epochs=2)
    prep = prepare(cfg)
    from recbole_reaseq.gbr.train import _sequences, load_reasoner

    model, _ = load_reasoner(prep)
    seqs = _sequences(prep, prep.holdout_rows)
    assert evaluate_ib(model, seqs, cfg) == evaluate_ib(model, seqs, cfg)


@pytest.mark.parametrize("field,value,needle", [
    ("rule", "Q", "rule"), ("loss", "hinge", "loss"), ("weighting", "sqrt", "weighting"),
    ("epochs", 30, "schedule-epochs"), ("n_heads", 3, "n_heads"), ("context", "x", "context"),
    ("tag", "../x", "tag")])
def test_bad_settings_name_the_field_and_the_fix(field, value, needle):
    with pytest.raises(ValueError, match=needle) as err:
        GBRConfig(dataset="tiny", **{field: value}).check()
    assert "Fix:" in str(err.value)


def test_cli_reports_and_bad_input(tiny_root, folders, capsys):
    base = ["--dataset", "tiny", "--data-path", tiny_root, "--artifact-dir", folders["b"],
            "--quiet", "--threads", "1"]
    assert cli.main(["locate"] + base) == 0
    out = capsys.readouterr().out
    assert "[FILL] ratio |U| / tokens" in out and "|L| ratio" in out
    assert cli.main(["train"] + base + ["--rule", "Q"]) == 2
    err = capsys.readouterr().err
    assert "rule='Q'" in err and "Fix:" in err
    assert cli.main(["augment"] + base + ["--d-model", "8", "--n-heads", "2"]) == 2
    assert "no finished, up-to-date reasoner" in capsys.readouterr().err


def test_cli_no_pack_reaches_the_run_config(monkeypatch):
    import importlib

    train_module = importlib.import_module("recbole_reaseq.gbr.train")   # the package's train
    seen = []                                                              # is the function

    def capture(cfg, data=None):
        seen.append(cfg.pack)
        raise KeyboardInterrupt          # stop before any data is read

    monkeypatch.setattr(train_module, "prepare", capture)
    for extra in ([], ["--no-pack"]):
        with pytest.raises(KeyboardInterrupt):
            cli.main(["train", "--dataset", "tiny", "--quiet"] + extra)
    assert seen == [True, False]


def test_data_fingerprint_reads_the_sequences_once_per_content(tmp_path, monkeypatch):
    """The time-order entry needs the sequences; a second check of the same .inter content and
    normalisation (transform, then model, in one run) must not load them again, and a changed
    file must."""
    import importlib

    from recbole_reaseq.gbr.train import data_fingerprint

    train_mod = importlib.import_module("recbole_reaseq.gbr.train")  # the package exports train()

    folder = tmp_path / "toy"
    folder.mkdir()
    inter = folder / "toy.inter"
    header = "user_id:token\titem_id:token\ttimestamp:float\n"
    # float32 of (t - min) / (max - min) ties 1e9 and 1e9 + 1: RecBole's order is not the raw one
    inter.write_text(header + "u\ta\t2000000000\nu\tb\t1000000001\nu\tc\t0\nu\td\t1000000000\n")
    calls = []
    real = train_mod.load_sequences
    monkeypatch.setattr(train_mod, "load_sequences",
                        lambda *a, **k: calls.append(k.get("normalize_time")) or real(*a, **k))
    monkeypatch.setattr(train_mod, "_TIME_ORDER", {})
    first = data_fingerprint("toy", str(tmp_path), True)
    assert first == {"inter": file_sha256(str(inter)), "time_order": "recbole-float32-normalized"}
    assert data_fingerprint("toy", str(tmp_path), True) == first and calls == [True]
    assert data_fingerprint("toy", str(tmp_path), False)["time_order"] == "recbole-float32"
    assert calls == [True, False]                       # the other normalisation: its own entry
    inter.write_text(header + "u\ta\t86400\nu\tb\t0\n")  # new content: read again, no entry
    assert data_fingerprint("toy", str(tmp_path), True) == {"inter": file_sha256(str(inter))}
    assert calls == [True, False, True]
    data = real("toy", str(tmp_path), normalize_time=False)
    assert data_fingerprint("toy", str(tmp_path), False, data=data) == {
        "inter": file_sha256(str(inter))} and len(calls) == 3   # the caller's sequences: no load

"""Paired significance test on hand-computed inputs; the report generator's exact Markdown."""
import json
import math
import os

import numpy as np
import pytest

from benchmarks import report, stats


def known_inputs():
    # seed 1: users 1, 2, 3 (model lists them out of order, plus a user 4 the baseline lacks)
    model = {1: (np.array([3, 1, 2, 4]), np.array([0.9, 0.6, 0.7, 0.1])),
             2: (np.array([1, 2, 3]), np.array([0.8, 0.5, 0.7]))}
    base = {1: (np.array([1, 2, 3]), np.array([0.5, 0.5, 0.5])),
            2: (np.array([2, 3, 1]), np.array([0.6, 0.6, 0.6])),
            3: (np.array([1, 2, 3]), np.array([0.0, 0.0, 0.0]))}     # seed 3: model lacks it
    return model, base


def test_paired_test_hand_computed():
    model, base = known_inputs()
    r = stats.paired_test(model, base)
    # per-user differences: seed 1 (0.1, 0.2, 0.4), seed 2 (0.2, -0.1, 0.1) -> mean (0.15, 0.05, 0.25)
    assert r["n_users"] == 3 and r["seeds"] == 2
    assert r["mean_diff"] == pytest.approx(0.15)
    # sd 0.1, t = 0.15 / (0.1 / sqrt 3); df 2: F(t) = 1/2 + t / (2 sqrt(2 + t^2))
    t = 0.15 / (0.1 / math.sqrt(3))
    assert r["t"] == pytest.approx(t)
    assert r["p_t"] == pytest.approx(2 * (0.5 - t / (2 * math.sqrt(2 + t * t))))
    half = 4.302652729911275 * 0.1 / math.sqrt(3)                 # t_{0.975, 2}
    assert (r["ci_low"], r["ci_high"]) == pytest.approx((0.15 - half, 0.15 + half))
    # Wilcoxon: 3 positive differences, W = 0, exact two-sided p = 2 / 2^3
    assert r["w"] == 0 and r["p_wilcoxon"] == pytest.approx(0.25)
    # seed level: means (0.7333 - 0.5, 0.6667 - 0.6) = (0.2333, 0.0667); t = 1.8 with df 1
    assert r["p_seed"] == pytest.approx(1 - 2 * math.atan(1.8) / math.pi)
    assert stats.marker(r) == ""
    assert stats.marker(dict(r, p_wilcoxon=0.01)) == "▲"
    assert stats.marker(dict(r, p_wilcoxon=0.01, mean_diff=-0.1)) == "▼"


def test_paired_test_needs_a_common_seed():
    model, base = known_inputs()
    with pytest.raises(ValueError, match="no seed in common"):
        stats.paired_test({9: model[1]}, base)


def write_run(root, run_id, seed, test, users, auc, fit=100.0, protocol="ctr", metric="auc",
              **extra):
    folder = os.path.join(root, run_id)
    os.makedirs(folder)
    result = {"seed": seed, "test_result": test, "epochs_trained": 4, "start_epoch": 0,
              "epoch_seconds": [10.0, 12.0], "fit_seconds": fit, "peak_rss_mb": 500.0,
              "git_commit": "abcdef0123456789", "other_protocols": {},
              "machine": {"cores": 2, "cpu": "CPU X", "torch": "2.13.0", "torch_threads": 1,
                          "python": "3.11.7"}, **extra}
    with open(os.path.join(folder, "result.json"), "w") as f:
        json.dump(result, f)
    np.savez(os.path.join(folder, "per_user_test.npz"),
             **{f"{protocol}__user_id": np.asarray(users), f"{protocol}__{metric}": np.asarray(auc)})


EXPECTED = """# fixture

Two models, two seeds.

## toy: ctr track

| model | seeds | auc | gauc | logloss | hit@10 | ndcg@10 | cold/gauc | hot/gauc | epochs | s/epoch | train s | peak MiB |
|---|---|---|---|---|---|---|---|---|---|---|---|---|
| Base | 2 | 0.7000 ± 0.1414 | 0.5500 ± 0.0707 | 0.5000 | – | – | – | – | 4 | 11.0 | 100 | 500 |
| Ours | 2 | 0.8000 | 0.7000 ± 0.0000 | – | – | – | – | – | 4 | 11.0 | 150 | 500 |

Paired test against Base (per-user test AUC, differences averaged over the seeds both have; ▲/▼ = Wilcoxon p < 0.05):

| model | seeds | users | ΔGAUC [95 % CI] | p Wilcoxon | p t | p seeds (t) |
|---|---|---|---|---|---|---|
| Ours | 2 | 3 | +0.1500 [-0.0984, +0.3984] | 0.250 | 0.122 | 0.323 |

Machine: 2 cores (CPU X), torch 2.13.0 with 1 threads, Python 3.11.7. Commit `abcdef0123`. Regenerate: `python benchmarks/run.py suites/fixture.yaml && python benchmarks/report.py suites/fixture.yaml`.
"""


def ctr_specs(root: str) -> list:
    """Specs of Base and Ours on the toy CTR track, seeds 1 and 2, stored under ``root``."""
    return [{"name": name, "dataset": "toy", "protocol": "ctr", "seed": seed,
             "dir": os.path.join(root, f"{name}__toy__ctr__seed{seed}")}
            for name in ("Base", "Ours") for seed in (1, 2)]


def write_ctr_fixture(root: str) -> None:
    """The four runs behind :data:`EXPECTED`."""
    model, base = known_inputs()
    write_run(root, "Base__toy__ctr__seed1", 1, {"auc": 0.6, "gauc": 0.5, "logloss": 0.5},
              *base[1])
    write_run(root, "Base__toy__ctr__seed2", 2, {"auc": 0.8, "gauc": 0.6}, *base[2])
    write_run(root, "Ours__toy__ctr__seed1", 1, {"auc": 0.8, "gauc": 0.7}, *model[1], fit=150.0)
    write_run(root, "Ours__toy__ctr__seed2", 2, {"gauc": 0.7}, *model[2], fit=150.0)


def test_report_exact_markdown(tmp_path):
    root = str(tmp_path)
    write_ctr_fixture(root)
    suite = {"suite": "fixture", "description": "Two models, two seeds.", "baseline": "Base",
             "_path": "suites/fixture.yaml"}
    specs = ctr_specs(root)
    markdown, rows = report.render(suite, report.collect(specs))
    assert markdown == EXPECTED
    ours = [r for r in rows if r["model"] == "Ours"]
    assert [r["vs_Base_gauc_diff"] for r in ours] == pytest.approx([0.15, 0.15])
    assert [r["seed"] for r in rows] == [1, 2, 1, 2]


EXPECTED_RANKING = """# fixture

Ranking track, one run resumed.

## toy: ranking track

| model | seeds | hit@10 | ndcg@10 | mrr@10 | hit@20 | ndcg@20 | epochs | s/epoch | train s | peak MiB |
|---|---|---|---|---|---|---|---|---|---|---|
| Base | 2 | 0.6000 | 0.5500 ± 0.0707 | – | – | – | 4 | 11.0 | 100 | 500 |
| Ours | 2 | – | 0.7000 ± 0.0000 | – | – | – | 5 | 13.5 | 175 | 500 |

Paired test against Base (per-user test NDCG@10, differences averaged over the seeds both have; ▲/▼ = Wilcoxon p < 0.05):

| model | seeds | users | ΔNDCG@10 [95 % CI] | p Wilcoxon | p t | p seeds (t) |
|---|---|---|---|---|---|---|
| Ours | 2 | 3 | +0.1500 [-0.0984, +0.3984] | 0.250 | 0.122 | 0.323 |

Machine: 2 cores (CPU X), torch 2.13.0 with 1 threads, Python 3.11.7. Runs from 2 commits (each run's result.json names its own), first `abcdef0123`, last `9876543210` in table order. Regenerate: `python benchmarks/run.py suites/fixture.yaml && python benchmarks/report.py suites/fixture.yaml`.
"""


def test_report_ranking_track_significance_and_resumed_time(tmp_path):
    """Ranking track: paired test on per-user NDCG@10; a resumed run (Ours, seed 2: 2 epochs of
    20 s and 22 s and 50 s of training before the interruption, 4 epochs after) counts them
    once: 6 epochs, s/epoch mean(20, 22, 10, 12) = 16, train s 150 + 50."""
    model, base = known_inputs()
    root = str(tmp_path)
    kw = dict(protocol="ranking", metric="ndcg@10")
    write_run(root, "Base__toy__ranking__seed1", 1, {"hit@10": 0.6, "ndcg@10": 0.5}, *base[1],
              **kw)
    write_run(root, "Base__toy__ranking__seed2", 2, {"ndcg@10": 0.6}, *base[2], **kw)
    write_run(root, "Ours__toy__ranking__seed1", 1, {"ndcg@10": 0.7}, *model[1], fit=150.0, **kw)
    write_run(root, "Ours__toy__ranking__seed2", 2, {"ndcg@10": 0.7}, *model[2], fit=150.0,
              start_epoch=2, epoch_seconds_before_resume=[20.0, 22.0],
              fit_seconds_before_resume=50.0, git_commit="9876543210fedcba", **kw)
    suite = {"suite": "fixture", "description": "Ranking track, one run resumed.",
             "baseline": "Base", "_path": "suites/fixture.yaml"}
    specs = [{"name": name, "dataset": "toy", "protocol": "ranking", "seed": seed,
              "dir": os.path.join(root, f"{name}__toy__ranking__seed{seed}")}
             for name in ("Base", "Ours") for seed in (1, 2)]
    markdown, rows = report.render(suite, report.collect(specs))
    assert markdown == EXPECTED_RANKING
    ours = [r for r in rows if r["model"] == "Ours"]
    assert [r["vs_Base_ndcg@10_diff"] for r in ours] == pytest.approx([0.15, 0.15])
    assert [(r["epochs"], r["sec_per_epoch"], r["fit_seconds"]) for r in ours] == [
        (4, 11.0, 150.0), (6, 16.0, 200.0)]


def test_readme_block_ranking_track_exact(tmp_path, monkeypatch):
    """README tables (benchmarks/readme_tables.py): ranking track, paired on per-user NDCG@10,
    with the CTR-track GAUC of the same early-stopped runs; a missing marker is a clear error."""
    from benchmarks import readme_tables, run as bench

    model, base = known_inputs()
    monkeypatch.setattr(bench, "HERE", str(tmp_path))
    root = tmp_path / "runs" / "fixture"
    for name, users, ndcg, gauc in (("Base", base, (0.5, 0.6), 0.7), ("Ours", model, (0.7, 0.7),
                                                                          0.8)):
        for seed in (1, 2):
            write_run(str(root), f"{name}__toy__ranking__seed{seed}", seed,
                      {"hit@10": 0.9, "ndcg@10": ndcg[seed - 1], "mrr@10": 0.4}, *users[seed],
                      protocol="ranking", metric="ndcg@10",
                      other_protocols={"ctr": {"test": {"gauc": gauc + seed / 100}}})
    suite = {"suite": "fixture", "datasets": ["toy"], "seeds": [1, 2], "baseline": "Base",
             "runs": [{"model": "Base", "protocol": "ranking"},
                      {"model": "Ours", "protocol": "ranking"}]}
    assert readme_tables.block(suite, "ranking") == "\n".join([
        "| model | seeds | HR@10 | NDCG@10 | MRR@10 | Δ NDCG@10 vs Base [95 % CI] | "
        "p (Wilcoxon) | CTR-track GAUC |",
        "|---|---|---|---|---|---|---|---|",
        "| Base | 2 | 0.9000 ± 0.0000 | 0.5500 ± 0.0707 | 0.4000 ± 0.0000 | – | – | "
        "0.7150 ± 0.0071 |",
        "| Ours | 2 | 0.9000 ± 0.0000 | 0.7000 ± 0.0000 | 0.4000 ± 0.0000 | "
        "+15.00 pt [-9.84, +39.84] | 0.250 | 0.8150 ± 0.0071 |"])
    assert readme_tables.block(suite, "cost").splitlines()[2:4] == [
        "| Base | ranking | 2 | 4 | 11 | 100 | 500 |", "| Ours | ranking | 2 | 4 | 11 | 100 | 500 |"]
    readme = tmp_path / "README.md"
    readme.write_text("no markers\n")
    with pytest.raises(KeyError, match="<!-- LEADERBOARD -->"):
        readme_tables.main(["--readme", str(readme)])


def test_report_marks_a_row_whose_seeds_read_different_tables(tmp_path):
    model, base = known_inputs()
    root = str(tmp_path)
    same = {"knowledge_emb": "aaaa"}
    write_run(root, "Base__toy__ctr__seed1", 1, {"auc": 0.6, "gauc": 0.5}, *base[1],
              frozen_tables=same)
    write_run(root, "Base__toy__ctr__seed2", 2, {"auc": 0.8, "gauc": 0.6}, *base[2],
              frozen_tables=same)
    write_run(root, "Ours__toy__ctr__seed1", 1, {"gauc": 0.7}, *model[1],
              frozen_tables={"fill_repr": "1111", "item_repr": "aaaa"})
    write_run(root, "Ours__toy__ctr__seed2", 2, {"gauc": 0.7}, *model[2],
              frozen_tables={"fill_repr": "2222", "item_repr": "aaaa"})
    suite = {"suite": "fixture", "baseline": "Base", "_path": "suites/fixture.yaml"}
    specs = ctr_specs(root)
    lines = report.render(suite, report.collect(specs))[0].split("\n")
    assert [line.split(" | ")[0] for line in lines if line.startswith("| Base")] == ["| Base"]
    assert any(line.startswith("| Ours † | 2 | ") for line in lines)
    assert ("† Ours: its seeds read different frozen tables (fill_repr), e.g. artefacts rebuilt "
            "between runs.") in lines
    assert report.mixed_tables([{"result": {}}, {"result": {"frozen_tables": {"x": "1"}}}]) == []


def test_readme_block_marks_mixed_tables(tmp_path, monkeypatch):
    from benchmarks import readme_tables, run as bench

    model, base = known_inputs()
    monkeypatch.setattr(bench, "HERE", str(tmp_path))
    root = tmp_path / "runs" / "fixture"
    for name, users in (("Base", base), ("Ours", model)):
        for seed in (1, 2):
            tables = {"fill_repr": f"{seed}" if name == "Ours" else "same"}
            write_run(str(root), f"{name}__toy__ctr__seed{seed}", seed, {"gauc": 0.5},
                      *users[seed], frozen_tables=tables)
    suite = {"suite": "fixture", "datasets": ["toy"], "seeds": [1, 2], "baseline": "Base",
             "runs": [{"model": "Base", "protocol": "ctr"}, {"model": "Ours", "protocol": "ctr"}]}
    names = [line.split(" | ")[0] for line in readme_tables.block(suite, "ctr").splitlines()[2:]]
    assert names == ["| Base", "| Ours †"]


def test_gsu_tie_stats_hand_computed():
    """benchmarks/gsu_ties.py: four (user, candidate) rows, K = 2, history width 4."""
    import torch

    from benchmarks.gsu_ties import tie_stats

    sims = torch.tensor([[0.9, 0.5, 0.5, 0.1],    # tie at slots 2/3: older {0, 1}, recent {0, 2}
                         [0.5, 0.5, 0.5, 0.9],    # 3-way tie below the best: {3, 0} vs {3, 2}
                         [0.5, 0.9, 0.5, 0.7],    # tie below slot 2: both {1, 3}
                         [0.5, 0.5, 0.9, 0.9]])   # 2 real items only (short): both {0, 1}
    mask = torch.tensor([[True] * 4, [True] * 4, [True] * 4, [True, True, False, False]])
    assert tie_stats(sims, mask, 2) == {"pairs": 4, "long": 3, "differ": 2, "boundary": 2,
                                        "shared": 0.5 + 0.5 + 1.0}


def test_baseline_list_picks_the_best_listed_row_per_track(tmp_path):
    """``baseline: [names]``: per table, among the listed rows with the most seeds, the one with
    the highest mean test GAUC (CTR) / NDCG@10 (ranking); a row "NAME (early-stopped on P)"
    counts as NAME; unlisted rows never."""
    def runs(key, *values):
        return [{"test": {key: v}} for v in values]

    ctr = {"Ours": runs("gauc", 0.9, 0.9), "DIN": runs("gauc", 0.70, 0.72),
           "DIEN": runs("gauc", 0.69), "SASRec (early-stopped on ranking)": runs("gauc", 0.75)}
    listed = ["DIN", "DIEN", "SASRec"]
    assert report.choose_baseline(listed, ctr, "ctr") == "DIN"         # 2 seeds beat 1 (0.75)
    assert report.choose_baseline(["DIEN", "SASRec"], ctr, "ctr") == (
        "SASRec (early-stopped on ranking)")                               # 1 seed each: 0.75
    assert report.choose_baseline(["DIN", "DIEN"], ctr, "ctr") == "DIN"
    assert report.choose_baseline("DIEN", ctr, "ctr") == "DIEN"             # a name: as it is
    assert report.choose_baseline(["GRU4Rec"], ctr, "ctr") is None
    assert report.choose_baseline(None, ctr, "ctr") is None
    ranking = {"SASRec": runs("ndcg@10", 0.040, 0.042), "GRU4Rec": runs("ndcg@10", 0.041, 0.035)}
    assert report.choose_baseline(listed + ["GRU4Rec"], ranking, "ranking") == "SASRec"  # .041>.038
    assert report.baseline_note(["DIN", "DIEN"], "DIN", "ctr") == (
        "DIN, the best of the baselines DIN, DIEN on this track (most seeds, then mean test "
        "GAUC)")
    assert report.baseline_note("DIN", "DIN", "ctr") == "DIN"


def test_report_with_a_baseline_list_names_the_choice(tmp_path):
    root = str(tmp_path)
    write_ctr_fixture(root)
    suite = {"suite": "fixture", "description": "Two models, two seeds.",
             "baseline": ["Base", "Absent"], "_path": "suites/fixture.yaml"}
    specs = ctr_specs(root)
    markdown, _rows = report.render(suite, report.collect(specs))
    assert markdown == EXPECTED.replace(
        "Paired test against Base (", "Paired test against Base, the best of the baselines "
        "Base, Absent on this track (most seeds, then mean test GAUC) (")

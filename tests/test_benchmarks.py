"""The benchmark runner: runs, skips finished runs, resumes an interrupted run, reports."""
import json
import os

import yaml

from benchmarks import report, run as bench
from tests.conftest import tiny_config


def write_suite(path, tiny_root, workdir, name="unit_suite"):
    cfg = tiny_config(tiny_root, workdir)
    cfg.pop("checkpoint_dir")
    suite = {"suite": name, "description": "tiny", "datasets": ["tiny"], "seeds": [1],
             "config": dict(cfg, epochs=2, stopping_step=10),
             "runs": [{"model": "SASRec", "protocol": "ranking",
                       "config": {"report_protocols": ["ctr"]}},
                      {"model": "DIN", "protocol": "ctr"}]}
    path.write_text(yaml.safe_dump(suite))
    return suite


def test_suite_runs_skips_resumes_and_reports(tiny_root, workdir, tmp_path, monkeypatch):
    monkeypatch.setattr(bench, "HERE", str(tmp_path))          # runs/ under tmp
    suite_file = tmp_path / "suite.yaml"
    write_suite(suite_file, tiny_root, workdir)
    specs = bench.expand(bench.load_suite(str(suite_file)))
    assert [s["run_id"] for s in specs] == ["SASRec__tiny__ranking__seed1",
                                            "DIN__tiny__ctr__seed1"]
    assert all(s["dir"].startswith(str(tmp_path)) for s in specs)

    first = bench.run_single(specs[0])
    result_file = os.path.join(specs[0]["dir"], "result.json")
    stored = json.load(open(result_file))
    assert stored["test_result"] == first["test_result"]
    assert stored["config"]["seed"] == 1 and stored["machine"]["cores"] == os.cpu_count()
    assert set(stored["other_protocols"]["ctr"]["test"]) >= {"auc", "gauc", "cold/gauc"}
    assert os.path.isfile(os.path.join(specs[0]["dir"], "per_user_test.npz"))
    assert len(stored["epoch_seconds"]) == 2

    # interrupted: the result is missing but RecBole's checkpoint is there -> resume from it
    os.remove(result_file)
    resumed = bench.run_single(specs[0])
    assert resumed["resumed_from"] and resumed["resumed_from"].endswith(".pth")
    assert resumed["start_epoch"] >= 1
    assert resumed["start_epoch"] + resumed["epochs_trained"] == 2   # no epoch trained twice

    # the parent loop skips finished runs: only DIN runs now (in a subprocess)
    bench.run_single(specs[1])
    mtimes = {s["run_id"]: os.path.getmtime(os.path.join(s["dir"], "result.json")) for s in specs}
    assert bench.main([str(suite_file)]) == 0
    assert mtimes == {s["run_id"]: os.path.getmtime(os.path.join(s["dir"], "result.json"))
                      for s in specs}

    suite = bench.load_suite(str(suite_file))
    suite["_path"] = "suite.yaml"
    markdown, rows = report.render(suite, report.collect(specs))
    assert "## tiny: ranking track" in markdown and "## tiny: ctr track" in markdown
    assert "SASRec (early-stopped on ranking)" in markdown
    assert {(r["model"], r["protocol"]) for r in rows} == {
        ("SASRec", "ranking"), ("SASRec (early-stopped on ranking)", "ctr"), ("DIN", "ctr")}
    din = next(r for r in rows if r["model"] == "DIN")
    assert din["gauc"] == json.load(open(os.path.join(specs[1]["dir"], "result.json")))[
        "test_result"]["gauc"]


def test_store_shared_between_suites_and_config_guard(tiny_root, workdir, tmp_path, monkeypatch):
    """Two suites naming one store share a finished run; a stored run with another config is
    refused with the differing key named; a run locked by another runner is skipped."""
    import fcntl

    import pytest

    monkeypatch.setattr(bench, "HERE", str(tmp_path))
    first, second = tmp_path / "a.yaml", tmp_path / "b.yaml"
    for path, name in ((first, "suite_a"), (second, "suite_b")):
        suite = write_suite(path, tiny_root, workdir, name=name)
        suite["store"] = "shared"
        suite["runs"] = [{"model": "DIN", "protocol": "ctr"},
                         {"model": "DIN", "name": "DIN-wide", "protocol": "ctr",
                          "seeds": [1, 2], "config": {"embedding_size": 8}}]
        path.write_text(yaml.safe_dump(suite))
    specs_a = bench.expand(bench.load_suite(str(first)))
    specs_b = bench.expand(bench.load_suite(str(second)))
    assert [s["run_id"] for s in specs_a] == ["DIN__tiny__ctr__seed1", "DIN-wide__tiny__ctr__seed1",
                                              "DIN-wide__tiny__ctr__seed2"]
    assert [s["dir"] for s in specs_a] == [s["dir"] for s in specs_b]
    assert all(os.path.dirname(s["dir"]) == str(tmp_path / "runs" / "shared") for s in specs_a)

    bench.run_single(specs_a[0])
    assert bench.stored_result(specs_b[0])["spec"]["suite"] == "suite_a"   # shared, not rerun
    assert bench.stored_result(specs_b[1]) is None

    # another runner holds the lock of the two wide runs: this one skips them and finishes
    locks = []
    for spec in specs_b[1:]:
        os.makedirs(spec["dir"], exist_ok=True)
        lock = open(os.path.join(spec["dir"], ".lock"), "w")
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        locks.append(lock)
    assert bench.main([str(second)]) == 0
    assert all(bench.stored_result(s) is None for s in specs_b[1:])
    for lock in locks:
        lock.close()

    # suite b now asks for another embedding size for the same run id: refused, key named
    suite = yaml.safe_load(second.read_text())
    suite["runs"][0]["config"] = {"embedding_size": 12}
    second.write_text(yaml.safe_dump(suite))
    stored = json.load(open(os.path.join(specs_a[0]["dir"], "result.json")))["config"]
    assert stored["embedding_size"] != 12
    with pytest.raises(ValueError,
                       match=rf"embedding_size: suite 12 vs stored {stored['embedding_size']}\b"):
        bench.main([str(second), "--list"])

    # duplicate run ids are refused at expansion
    suite["runs"].append({"model": "DIN", "protocol": "ctr"})
    with pytest.raises(ValueError, match="occur twice"):
        bench.expand(suite)

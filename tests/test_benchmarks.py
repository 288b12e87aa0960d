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

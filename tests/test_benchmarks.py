"""The benchmark runner: runs, skips finished runs, resumes an interrupted run, reports."""
import glob
import json
import os

import pytest
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


def test_result_records_the_commit_the_run_started_from(tiny_root, workdir, tmp_path,
                                                        monkeypatch):
    """A commit made while a run trains is not the code it ran: result.json keeps HEAD as it
    was when the run's process started."""
    from recbole_reaseq import quick_start

    monkeypatch.setattr(bench, "HERE", str(tmp_path))
    suite_file = tmp_path / "suite.yaml"
    write_suite(suite_file, tiny_root, workdir)
    spec = bench.expand(bench.load_suite(str(suite_file)))[0]
    head = {"sha": "1111111"}
    real_run = quick_start.run

    def run_then_commit(*args, **kwargs):
        result = real_run(*args, **kwargs)
        head["sha"] = "2222222"                                  # committed during training
        return result

    monkeypatch.setattr(bench, "git_commit", lambda: head["sha"])
    monkeypatch.setattr(quick_start, "run", run_then_commit)
    bench.run_single(dict(spec, config=dict(spec["config"], epochs=1)))
    stored = json.load(open(os.path.join(spec["dir"], "result.json")))
    assert head["sha"] == "2222222" and stored["git_commit"] == "1111111"


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
    assert stored["frozen_tables"] == {}                 # RecBole's SASRec reads no artefact

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


def test_suite_with_an_unknown_protocol_or_baseline_is_refused_at_load(tiny_root, workdir,
                                                                       tmp_path):
    suite_file = tmp_path / "suite.yaml"
    suite = write_suite(suite_file, tiny_root, workdir)
    suite["runs"][1]["protocol"] = "pointwise"
    suite_file.write_text(yaml.safe_dump(suite))
    with pytest.raises(ValueError, match=r"runs\[1\] \(DIN\) has protocol 'pointwise'; use one "
                                         r"of \('ranking', 'ctr'\)"):
        bench.load_suite(str(suite_file))
    suite["runs"][1]["protocol"] = "ctr"
    for baseline in (["DIN", "DEIN"], "DEIN"):                 # a typo, in a list or alone
        suite["baseline"] = baseline
        suite_file.write_text(yaml.safe_dump(suite))
        with pytest.raises(ValueError, match=r"baseline names \['DEIN'\], which are not runs "
                                             r"of this suite \(runs: \['DIN', 'SASRec'\]\)"):
            bench.load_suite(str(suite_file))
    suite["baseline"] = ["DIN", "SASRec"]
    suite_file.write_text(yaml.safe_dump(suite))
    assert bench.load_suite(str(suite_file))["baseline"] == ["DIN", "SASRec"]


def test_list_states_and_time_estimates(tiny_root, workdir, tmp_path, monkeypatch, capsys):
    """--list: done / part (epochs logged, will resume) / todo, with the time still needed
    estimated from finished runs of the same name and data set (hand-computed below)."""
    monkeypatch.setattr(bench, "HERE", str(tmp_path))
    suite_file = tmp_path / "suite.yaml"
    suite = write_suite(suite_file, tiny_root, workdir)
    suite["seeds"] = [1, 2, 3]
    suite["runs"].append({"model": "SASRec", "name": "SASRec-long", "protocol": "ranking",
                          "seeds": [1], "config": {"epochs": 4}})
    suite_file.write_text(yaml.safe_dump(suite))
    specs = bench.expand(bench.load_suite(str(suite_file)))
    by_id = {s["run_id"]: s for s in specs}
    # SASRec seeds 1, 2 finished; seed 2 was resumed: 500 s in its last process after 400 s of
    # epochs inherited from its checkpoint, 900 s in all
    for seed, times in ((1, {"wall_seconds": 600.0}),
                        (2, {"wall_seconds": 500.0, "fit_seconds_before_resume": 400.0})):
        spec = by_id[f"SASRec__tiny__ranking__seed{seed}"]
        os.makedirs(spec["dir"])
        json.dump(dict(times, spec={"config": spec["config"]}),
                  open(os.path.join(spec["dir"], "result.json"), "w"))
    partial = by_id["SASRec__tiny__ranking__seed3"]["dir"]     # 2 epochs logged, 200 s
    os.makedirs(partial)
    with open(os.path.join(partial, "epochs.jsonl"), "w") as f:
        for epoch, phase, seconds in ((0, "train", 90), (0, "valid", 10), (1, "train", 95),
                                      (1, "valid", 5)):
            f.write(json.dumps({"epoch": epoch, "phase": phase, "seconds": seconds}) + "\n")
        f.write('{"epoch": 2, "pha')                           # cut by a kill: ignored
    assert bench.main([str(suite_file), "--list"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "done  SASRec__tiny__ranking__seed1",
        "done  SASRec__tiny__ranking__seed2",
        "part  SASRec__tiny__ranking__seed3  (2 epochs logged)  ~9 min",   # (750 - 200) / 60
        "todo  DIN__tiny__ctr__seed1  ~? min",
        "todo  DIN__tiny__ctr__seed2  ~? min",
        "todo  DIN__tiny__ctr__seed3  ~? min",
        "todo  SASRec-long__tiny__ranking__seed1  ~12 min*",               # 750 / 60, by model
        "5 runs left, ~0.4 h of one runner (mean wall time of the finished runs with the same "
        "name and data set; * 1 from the same model's other runs); 3 without an estimate (none "
        "of their model finished)"]


KILLER = '''
"""Test helper (imported at start-up through PYTHONPATH): SIGKILL this process at the second
training batch of the epoch after REASEQ_TEST_KILL_EPOCHS epochs appear in the epoch log."""
import os

if os.environ.get("REASEQ_TEST_KILL_LOG"):
    import signal

    import recbole_reaseq  # noqa: F401  (compat first)
    from recbole_reaseq import registry

    _model = registry.get_model(os.environ["REASEQ_TEST_KILL_MODEL"])
    _loss, _seen = _model.calculate_loss, []

    def _calculate_loss(self, interaction):
        path = os.environ["REASEQ_TEST_KILL_LOG"]
        done = 0
        if os.path.isfile(path):
            done = sum('"train"' in line for line in open(path))
        if done >= int(os.environ["REASEQ_TEST_KILL_EPOCHS"]):
            _seen.append(1)
            if len(_seen) == 2:
                os.kill(os.getpid(), signal.SIGKILL)
        return _loss(self, interaction)

    _model.calculate_loss = _calculate_loss
'''


def test_kill_mid_epoch_then_rerun_resumes_without_double_counting(tiny_root, workdir, tmp_path,
                                                                   monkeypatch):
    """A real kill: the training subprocess gets SIGKILL in the middle of its third epoch. The
    rerun resumes from RecBole's checkpoint, trains only the missing epochs, and the stored
    times count every epoch of the final trajectory once; a third run retrains nothing."""
    cfg = tiny_config(tiny_root, workdir)
    cfg.pop("checkpoint_dir")
    store = tmp_path / "store"
    suite_file = tmp_path / "suite.yaml"
    suite_file.write_text(yaml.safe_dump({
        "suite": "kill", "store": str(store), "datasets": ["tiny"], "seeds": [1],
        "config": dict(cfg, epochs=4, stopping_step=10),
        "runs": [{"model": "DIN", "protocol": "ctr"}]}))
    spec = bench.expand(bench.load_suite(str(suite_file)))[0]
    assert spec["dir"].startswith(str(store))
    log = os.path.join(spec["dir"], "epochs.jsonl")
    killer = tmp_path / "killer"
    killer.mkdir()
    (killer / "sitecustomize.py").write_text(KILLER)
    monkeypatch.setenv("PYTHONPATH", str(killer))
    monkeypatch.setenv("REASEQ_TEST_KILL_LOG", log)
    monkeypatch.setenv("REASEQ_TEST_KILL_EPOCHS", "2")
    monkeypatch.setenv("REASEQ_TEST_KILL_MODEL", "DIN")

    assert bench.main([str(suite_file)]) == 1                    # the run was killed
    assert not os.path.exists(os.path.join(spec["dir"], "result.json"))
    assert glob.glob(os.path.join(spec["dir"], "*.pth"))          # best epoch so far
    first = bench.read_epoch_log(log)
    assert [e["epoch"] for e in first if e["phase"] == "train"] == [0, 1]   # died in epoch 2

    monkeypatch.delenv("REASEQ_TEST_KILL_LOG")
    assert bench.main([str(suite_file)]) == 0
    result = json.load(open(os.path.join(spec["dir"], "result.json")))
    start = result["start_epoch"]
    assert result["resumed_from"].endswith(".pth") and start in (1, 2)
    assert start + result["epochs_trained"] == 4                  # no epoch trained twice
    events = bench.read_epoch_log(log)
    assert [e["epoch"] for e in events[len(first):] if e["phase"] == "train"] == list(
        range(start, 4))
    inherited = [e for e in first if e["epoch"] < start]
    assert result["epoch_seconds_before_resume"] == [
        e["seconds"] for e in inherited if e["phase"] == "train"]
    assert result["fit_seconds_before_resume"] == pytest.approx(
        sum(e["seconds"] for e in inherited))
    _, rows = report.render({"suite": "kill", "_path": "suite.yaml"}, report.collect([spec]))
    assert rows[0]["epochs"] == 4
    assert rows[0]["fit_seconds"] == pytest.approx(
        result["fit_seconds"] + result["fit_seconds_before_resume"])

    mtime = os.path.getmtime(os.path.join(spec["dir"], "result.json"))
    assert bench.main([str(suite_file)]) == 0                    # finished: not retrained
    assert os.path.getmtime(os.path.join(spec["dir"], "result.json")) == mtime


def test_markdown_table_and_csv_helpers(tmp_path):
    from benchmarks.common import markdown_table, write_csv

    rows = [{"model": "DIN", "ratio": 1.0}, {"model": "ReaSeqCTR", "ratio": 0.59}]
    assert markdown_table(rows) == ("| model | ratio |\n|---|---|\n| DIN | 1.0 |\n"
                                    "| ReaSeqCTR | 0.59 |\n")
    write_csv(str(tmp_path / "sub" / "t.csv"), rows)
    assert (tmp_path / "sub" / "t.csv").read_bytes() == b"model,ratio\r\nDIN,1.0\r\nReaSeqCTR,0.59\r\n"


SHIPPED_SUITES = sorted(glob.glob(os.path.join(os.path.dirname(bench.__file__), "suites",
                                               "*.yaml")))


@pytest.mark.parametrize("path", SHIPPED_SUITES, ids=os.path.basename)
def test_shipped_suite_is_runnable(path):
    """Every suite in benchmarks/suites parses and expands; each run names a registered model
    (ours or RecBole's) and a known protocol (``load_suite`` checks it); and every stored result.json a run would reuse
    agrees with the suite's config (otherwise the runner stops at that run, naming the keys)."""
    from recbole_reaseq import registry

    specs = bench.expand(bench.load_suite(path))
    assert specs
    for spec in specs:
        assert registry.get_model(spec["model"]) is not None      # raises for an unknown name
        result = bench.stored_result(spec)                        # raises on a config mismatch
        if result is not None:
            assert (result["model"], result["seed"]) == (spec["model"], spec["seed"])


def test_shipped_suites_sharing_a_store_agree_on_shared_runs():
    """Two suites that name one store and one run id must not ask for different values of a key
    both set (the runner's reuse rule): the run is trained once and reused by both. Checked
    before any run exists, unlike the stored-result check above."""
    asked = {}                       # run dir -> {key: (first suite setting it, its value)}
    shared = 0
    for path in SHIPPED_SUITES:
        name = os.path.basename(path)
        for spec in bench.expand(bench.load_suite(path)):
            shared += spec["dir"] in asked
            keys = asked.setdefault(spec["dir"], {})
            for key, value in spec["config"].items():
                value = json.dumps(value, sort_keys=True, default=str)
                other, before = keys.setdefault(key, (name, value))
                assert before == value, (f"{spec['run_id']}: {other} and {name} set {key} "
                                         f"differently ({before} vs {value})")
    assert shared > 0                                   # the shipped suites do share runs

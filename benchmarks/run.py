"""Run a declarative benchmark suite: (model x dataset x protocol x seed), resumable.

    python benchmarks/run.py benchmarks/suites/baselines_beauty.yaml [--only SASRec DIN] [--list]
    python benchmarks/report.py benchmarks/suites/baselines_beauty.yaml

A suite file names the data sets, seeds, shared config overrides and the runs (model, protocol,
per-run overrides, optional per-run ``seeds`` and ``name``). Each run executes in its own
subprocess (so peak memory is per run) under ``benchmarks/runs/<store>/<run id>/``; ``store``
defaults to the suite's name, and suites that name the same store share runs (Table 3 and
Table 4 both need DIN: it trains once). A finished run has ``result.json`` and is skipped, but
only if the stored run's effective config agrees with the suite on every key the suite sets;
otherwise the runner stops and names the keys. An interrupted run resumes from the checkpoint
RecBole saved in its folder (the best epoch so far); the time of the epochs trained before the
interruption is read from ``<run dir>/epochs.jsonl`` (config ``reaseq_epoch_log``) so that the
report's training time covers the whole run, with no epoch counted twice. A run being trained by another runner
process (an flock on ``<run dir>/.lock``) is skipped, so two runners can share a store.
Every model is resolved through recbole_reaseq.registry and trained by recbole_reaseq.quick_start.run:
there are no per-model scripts.

    python benchmarks/run.py SUITE --rescore

re-evaluates the stored checkpoint of finished runs whose ``per_user_test.npz`` lacks per-user
metrics of a protocol (ranking runs finished before they were stored), checks that their means
reproduce the stored test result, and adds them: the report's paired tests need them.
"""
from __future__ import annotations

import argparse
import fcntl
import glob
import json
import os
import platform
import subprocess
import sys
import time

import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)


def load_suite(path: str) -> dict:
    with open(path, encoding="utf-8") as f:
        suite = yaml.safe_load(f)
    for key in ("suite", "datasets", "seeds", "runs"):
        if key not in suite:
            raise KeyError(f"suite file {path} lacks the key '{key}'")
    from recbole_reaseq.config import EVAL_PROTOCOLS

    for i, run in enumerate(suite["runs"]):
        for key in ("model", "protocol"):
            if key not in run:
                raise KeyError(f"{path}: runs[{i}] lacks the key '{key}'")
        if run["protocol"] not in EVAL_PROTOCOLS:
            raise ValueError(f"{path}: runs[{i}] ({run['model']}) has protocol "
                             f"{run['protocol']!r}; use one of {EVAL_PROTOCOLS}")
    baseline = suite.get("baseline")
    names = {run.get("name", run["model"]) for run in suite["runs"]}
    unknown = sorted(set([baseline] if isinstance(baseline, str) else baseline or []) - names)
    if unknown:
        raise ValueError(f"{path}: baseline names {unknown}, which are not runs of this suite "
                         f"(runs: {sorted(names)}); fix the 'baseline' key")
    return suite


def expand(suite: dict) -> list[dict]:
    """One spec per (run, dataset, seed), with its merged config and folder."""
    specs = []
    store = suite.get("store", suite["suite"])
    for run in suite["runs"]:
        for dataset in run.get("datasets", suite["datasets"]):
            for seed in run.get("seeds", suite["seeds"]):
                config = dict(suite.get("config") or {})
                config.update((suite.get("dataset_config") or {}).get(dataset) or {})
                config.update(run.get("config") or {})
                config.update({"seed": seed, "eval_protocol": run["protocol"]})
                name = run.get("name", run["model"])
                run_id = f"{name}__{dataset}__{run['protocol']}__seed{seed}"
                specs.append({"suite": suite["suite"], "name": name, "model": run["model"],
                              "dataset": dataset, "protocol": run["protocol"], "seed": seed,
                              "config": config, "run_id": run_id,
                              "dir": os.path.join(HERE, "runs", store, run_id)})
    ids = [s["run_id"] for s in specs]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise ValueError(f"suite {suite['suite']}: run ids {duplicates} occur twice; give the "
                         "runs distinct 'name' keys")
    return specs


def config_mismatch(spec: dict, result: dict) -> dict:
    """{key: (suite value, stored value)} for every suite-set key the stored run disagrees on.

    The stored value is what the stored run's suite asked for, where it set the key, else the
    run's effective (final) config value: RecBole rewrites some keys (``data_path`` gets the
    data set appended), so the request is compared with the request where both exist."""
    asked = (result.get("spec") or {}).get("config") or {}
    final = result.get("config") or {}
    mismatch = {}
    for key, value in spec["config"].items():
        stored = asked[key] if key in asked else final.get(key)
        if json.loads(json.dumps(stored, default=str)) != json.loads(json.dumps(value, default=str)):
            mismatch[key] = (value, stored)
    return mismatch


def stored_result(spec: dict):
    """The stored result of a finished run (None if unfinished); refuses a config mismatch."""
    path = os.path.join(spec["dir"], "result.json")
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        result = json.load(f)
    mismatch = config_mismatch(spec, result)
    if mismatch:
        raise ValueError(
            f"{spec['run_id']} in {os.path.dirname(spec['dir'])} was run with a different config "
            f"than suite {spec['suite']} asks for: "
            + ", ".join(f"{k}: suite {a!r} vs stored {b!r}" for k, (a, b) in mismatch.items())
            + ". Give the run another 'name' or the suite another 'store'.")
    return result


def machine() -> dict:
    import torch

    from benchmarks.common import cpu_model

    return {"cpu": cpu_model(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(), "torch": torch.__version__,
            "platform": platform.platform()}


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True,
                              text=True).stdout.strip()
    except OSError:
        return "unknown"


def read_epoch_log(path: str) -> list[dict]:
    """The lines of a ``reaseq_epoch_log`` file (a line cut by a kill is ignored)."""
    if not os.path.isfile(path):
        return []
    events = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                events.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return events


def before_resume(events: list[dict], start_epoch: int) -> tuple[list[float], float]:
    """(train seconds per epoch, train + valid seconds) of epochs ``< start_epoch``: the ones a
    resumed run inherits from its checkpoint. An epoch trained more than once (several
    interruptions) counts once, with its latest time (the checkpoint descends from it)."""
    latest = {}
    for e in events:
        if 0 <= e["epoch"] < start_epoch:
            latest[(e["epoch"], e["phase"])] = e["seconds"]
    train = [latest[(k, "train")] for k in range(start_epoch) if (k, "train") in latest]
    return train, float(sum(latest.values()))


def plan(specs: list[dict]) -> list[dict]:
    """State and remaining-time estimate of every spec, for ``--list``.

    ``state``: ``done`` (result stored), ``part`` (epochs logged in ``epochs.jsonl``, so it will
    resume) or ``todo``. ``estimate``: seconds still needed, from the finished runs of the same
    name and data set (mean of their total time, minus the time a partial run already logged,
    at least 0), else (``by_model``) from those of the same model and data set; ``None`` when
    neither has finished. A finished run's total time is ``wall_seconds`` (its last process)
    plus, for a resumed run, the epoch time its checkpoint inherited
    (``fit_seconds_before_resume``)."""
    results = {s["run_id"]: stored_result(s) for s in specs}
    walls = {}
    for spec in specs:
        result = results[spec["run_id"]]
        if result is not None and result.get("wall_seconds") is not None:
            for key in ((spec["name"], spec["dataset"]), ("model", spec["model"], spec["dataset"])):
                walls.setdefault(key, []).append(
                    result["wall_seconds"] + result.get("fit_seconds_before_resume", 0.0))
    rows = []
    for spec in specs:
        events = read_epoch_log(os.path.join(spec["dir"], "epochs.jsonl"))
        logged = float(sum(e["seconds"] for e in events))
        state = ("done" if results[spec["run_id"]] is not None else "part" if events else "todo")
        same_name = walls.get((spec["name"], spec["dataset"]))
        known = same_name or walls.get(("model", spec["model"], spec["dataset"]))
        estimate = None
        if state != "done" and known:
            estimate = max(0.0, sum(known) / len(known) - logged)
        rows.append({"run_id": spec["run_id"], "state": state, "estimate": estimate,
                     "by_model": estimate is not None and not same_name,
                     "epochs_logged": len({e["epoch"] for e in events if e["phase"] == "train"})})
    return rows


def format_plan(rows: list[dict]) -> str:
    """``--list`` output: one line per run, then the total still to run."""
    lines, total, unknown, left, by_model = [], 0.0, 0, 0, 0
    for row in rows:
        line = f"{row['state']}  {row['run_id']}"
        if row["state"] != "done":
            left += 1
            if row["state"] == "part":
                line += f"  ({row['epochs_logged']} epochs logged)"
            if row["estimate"] is None:
                unknown += 1
                line += "  ~? min"
            else:
                total += row["estimate"]
                by_model += row["by_model"]
                line += f"  ~{row['estimate'] / 60:.0f} min" + ("*" if row["by_model"] else "")
        lines.append(line)
    hours = "?" if left and unknown == left else f"{total / 3600:.1f}"
    lines.append(f"{left} runs left, ~{hours} h of one runner (mean wall time of the "
                 f"finished runs with the same name and data set"
                 + (f"; * {by_model} from the same model's other runs" if by_model else "")
                 + ")" + (f"; {unknown} without an estimate (none of their model finished)"
                          if unknown else ""))
    return "\n".join(lines)


def save_per_user(path: str, per_user: dict) -> None:
    """Write ``{protocol: {key: array}}`` as ``<protocol>__<key>`` arrays, keeping other arrays
    already in the file (atomic)."""
    import numpy as np

    arrays = {}
    if os.path.isfile(path):
        with np.load(path) as z:
            arrays = {k: z[k] for k in z.files}
    arrays.update({f"{proto}__{key}": np.asarray(value) for proto, users in per_user.items()
                   if users for key, value in users.items()})
    if arrays:
        tmp = path + ".tmp.npz"
        np.savez_compressed(tmp, **arrays)
        os.replace(tmp, path)


def run_single(spec: dict) -> dict:
    """Train/evaluate one spec in this process; writes result.json (+ per-user npz)."""
    from recbole_reaseq.quick_start import run

    os.makedirs(spec["dir"], exist_ok=True)
    epoch_log = os.path.join(spec["dir"], "epochs.jsonl")
    config = dict(spec["config"], checkpoint_dir=spec["dir"], reaseq_epoch_log=epoch_log)
    # one candidate set per data set, shared by every run (and by run_recbole.py from the root)
    config.setdefault("reaseq_artifact_dir", os.path.join(REPO, "artifacts"))
    checkpoints = sorted(glob.glob(os.path.join(spec["dir"], "*.pth")), key=os.path.getmtime)
    resume = checkpoints[-1] if checkpoints else None
    if resume is None and os.path.isfile(epoch_log):
        os.remove(epoch_log)                       # killed before any checkpoint: starts afresh
    earlier = read_epoch_log(epoch_log)
    commit = git_commit()              # the code this process runs: HEAD may move while it trains
    result = run(spec["model"], spec["dataset"], config_dict=config, resume_file=resume)
    train_before, fit_before = before_resume(earlier, result["start_epoch"])
    result.update({"epoch_seconds_before_resume": train_before,
                   "fit_seconds_before_resume": fit_before})
    save_per_user(os.path.join(spec["dir"], "per_user_test.npz"),
                  result.pop("per_user_test") or {})
    final_config = result.pop("config")
    result["config"] = {k: (v if isinstance(v, (int, float, str, bool, list, dict, type(None)))
                            else str(v)) for k, v in final_config.final_config_dict.items()}
    result.update({"spec": {k: v for k, v in spec.items() if k != "dir"}, "machine": machine(),
                   "git_commit": commit, "resumed_from": resume,
                   "finished": time.strftime("%Y-%m-%d %H:%M:%S")})
    tmp = os.path.join(spec["dir"], "result.json.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=1, default=str)
    os.replace(tmp, os.path.join(spec["dir"], "result.json"))
    return result


def rescore(spec: dict, result: dict) -> list[str]:
    """Add the per-user test metrics a finished run lacks (protocols missing from its npz),
    computed from its stored checkpoint; returns the protocols added. The recomputed means must
    equal the stored test result (to 2e-6), else nothing is written."""
    import numpy as np

    from recbole_reaseq.quick_start import build_trainer, evaluate_protocol, load_data_and_model

    path = os.path.join(spec["dir"], "per_user_test.npz")
    have = set()
    if os.path.isfile(path):
        with np.load(path) as z:
            have = set(z.files)
    stored = {spec["protocol"]: result["test_result"],
              **{p: r["test"] for p, r in (result.get("other_protocols") or {}).items()}}
    missing = [p for p in stored if f"{p}__user_id" not in have]
    if not missing:
        return []
    checkpoints = sorted(glob.glob(os.path.join(spec["dir"], "*.pth")), key=os.path.getmtime)
    if not checkpoints:
        raise FileNotFoundError(f"{spec['run_id']}: no checkpoint (*.pth) in {spec['dir']} to "
                                f"rescore. Fix: delete result.json and rerun the run.")
    cwd = os.getcwd()
    os.chdir(spec["dir"])                         # RecBole's logger writes ./log
    try:
        config, model, dataset, _, _, test_data = load_data_and_model(
            checkpoints[-1], {"checkpoint_dir": spec["dir"], "reaseq_epoch_log": None})
        trainer = build_trainer(config, model, dataset)
        per_user = {}
        for protocol in missing:
            test, users = evaluate_protocol(trainer, test_data, protocol, dataset)
            off = {k: (test[k], v) for k, v in stored[protocol].items()
                   if k in test and abs(test[k] - v) > 2e-6}
            if off or users is None:
                why = off or "no per-user metrics"
                raise RuntimeError(f"{spec['run_id']}: the checkpoint {checkpoints[-1]} does not "
                                   f"reproduce the stored {protocol} test result ({why}); "
                                   f"nothing written.")
            per_user[protocol] = users
    finally:
        os.chdir(cwd)
    save_per_user(path, per_user)
    return missing


def main(argv=None):
    parser = argparse.ArgumentParser(description="Run a benchmark suite (resumable).")
    parser.add_argument("suite", help="suite YAML file")
    parser.add_argument("--only", nargs="*", help="run names to run (default: all)")
    parser.add_argument("--seeds", nargs="*", type=int, help="seeds to run (default: all)")
    parser.add_argument("--list", action="store_true",
                        help="list runs, their state (done / part / todo) and the estimated "
                             "time still needed")
    parser.add_argument("--rescore", action="store_true",
                        help="add missing per-user test metrics of finished runs from their "
                             "checkpoints")
    parser.add_argument("--single", help=argparse.SUPPRESS)   # internal: one run id
    args = parser.parse_args(argv)
    specs = expand(load_suite(args.suite))
    if args.single:
        run_single(next(s for s in specs if s["run_id"] == args.single))
        return 0
    if args.rescore:
        for spec in specs:
            result = stored_result(spec)
            if result is None or (args.only and spec["name"] not in args.only) or (
                    args.seeds and spec["seed"] not in args.seeds):
                continue
            added = rescore(spec, result)
            print(f"[rescore] {spec['run_id']}: " + (f"added {', '.join(added)}" if added
                                                     else "complete"), flush=True)
        return 0
    if args.list:
        print(format_plan(plan(specs)))
        return 0
    failed = []
    for spec in specs:
        done = stored_result(spec) is not None
        if done or (args.only and spec["name"] not in args.only) or (
                args.seeds and spec["seed"] not in args.seeds):
            continue
        os.makedirs(spec["dir"], exist_ok=True)
        with open(os.path.join(spec["dir"], ".lock"), "w") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                print(f"[busy] {spec['run_id']} (another runner is training it)", flush=True)
                continue
            if stored_result(spec) is not None:            # finished while we waited
                continue
            print(f"[run] {spec['run_id']}", flush=True)
            with open(os.path.join(spec["dir"], "log.txt"), "a") as log:
                code = subprocess.call([sys.executable, os.path.abspath(__file__),
                                        os.path.abspath(args.suite),
                                        "--single", spec["run_id"]], stdout=log,
                                       stderr=subprocess.STDOUT, cwd=spec["dir"])
        if code != 0:
            failed.append(spec["run_id"])
            print(f"[failed] {spec['run_id']} (see {spec['dir']}/log.txt)", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

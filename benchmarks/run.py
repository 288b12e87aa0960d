"""Run a declarative benchmark suite: (model x dataset x protocol x seed), resumable.

    python benchmarks/run.py benchmarks/suites/baselines_beauty.yaml [--only SASRec DIN] [--list]
    python benchmarks/report.py benchmarks/suites/baselines_beauty.yaml

A suite file names the data sets, seeds, shared config overrides and the runs (model, protocol,
per-run overrides). Each run executes in its own subprocess (so peak memory is per run) under
``benchmarks/runs/<suite>/<run id>/``; a finished run has ``result.json`` and is skipped. An
interrupted run resumes from the checkpoint RecBole saved in its folder (the best epoch so far).
Every model is resolved through recbole_reaseq.registry and trained by recbole_reaseq.quick_start.run:
there are no per-model scripts.
"""
from __future__ import annotations

import argparse
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
    for i, run in enumerate(suite["runs"]):
        for key in ("model", "protocol"):
            if key not in run:
                raise KeyError(f"{path}: runs[{i}] lacks the key '{key}'")
    return suite


def expand(suite: dict) -> list[dict]:
    """One spec per (run, dataset, seed), with its merged config and folder."""
    specs = []
    for run in suite["runs"]:
        for dataset in run.get("datasets", suite["datasets"]):
            for seed in suite["seeds"]:
                config = dict(suite.get("config") or {})
                config.update((suite.get("dataset_config") or {}).get(dataset) or {})
                config.update(run.get("config") or {})
                config.update({"seed": seed, "eval_protocol": run["protocol"]})
                name = run.get("name", run["model"])
                run_id = f"{name}__{dataset}__{run['protocol']}__seed{seed}"
                specs.append({"suite": suite["suite"], "name": name, "model": run["model"],
                              "dataset": dataset, "protocol": run["protocol"], "seed": seed,
                              "config": config, "run_id": run_id,
                              "dir": os.path.join(HERE, "runs", suite["suite"], run_id)})
    return specs


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


def run_single(spec: dict) -> dict:
    """Train/evaluate one spec in this process; writes result.json (+ per-user npz)."""
    import numpy as np

    from recbole_reaseq.quick_start import run

    os.makedirs(spec["dir"], exist_ok=True)
    config = dict(spec["config"], checkpoint_dir=spec["dir"])
    # one candidate set per data set, shared by every run (and by run_recbole.py from the root)
    config.setdefault("reaseq_artifact_dir", os.path.join(REPO, "artifacts"))
    checkpoints = sorted(glob.glob(os.path.join(spec["dir"], "*.pth")), key=os.path.getmtime)
    resume = checkpoints[-1] if checkpoints else None
    result = run(spec["model"], spec["dataset"], config_dict=config, resume_file=resume)
    per_user = result.pop("per_user_test") or {}
    arrays = {f"{proto}__{key}": np.asarray(value) for proto, users in per_user.items()
              if users for key, value in users.items()}
    if arrays:
        np.savez_compressed(os.path.join(spec["dir"], "per_user_test.npz"), **arrays)
    final_config = result.pop("config")
    result["config"] = {k: (v if isinstance(v, (int, float, str, bool, list, dict, type(None)))
                            else str(v)) for k, v in final_config.final_config_dict.items()}
    result.update({"spec": {k: v for k, v in spec.items() if k != "dir"}, "machine": machine(),
                   "git_commit": git_commit(), "resumed_from": resume,
                   "finished": time.strftime("%Y-%m-%d %H:%M:%S")})
    tmp = os.path.join(spec["dir"], "result.json.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=1, default=str)
    os.replace(tmp, os.path.join(spec["dir"], "result.json"))
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description="Run a benchmark suite (resumable).")
    parser.add_argument("suite", help="suite YAML file")
    parser.add_argument("--only", nargs="*", help="run names to run (default: all)")
    parser.add_argument("--list", action="store_true", help="list runs and their state")
    parser.add_argument("--single", help=argparse.SUPPRESS)   # internal: one run id
    args = parser.parse_args(argv)
    specs = expand(load_suite(args.suite))
    if args.single:
        run_single(next(s for s in specs if s["run_id"] == args.single))
        return 0
    failed = []
    for spec in specs:
        done = os.path.isfile(os.path.join(spec["dir"], "result.json"))
        if args.list:
            print(f"{'done' if done else 'todo'}  {spec['run_id']}")
            continue
        if done or (args.only and spec["name"] not in args.only):
            continue
        print(f"[run] {spec['run_id']}", flush=True)
        os.makedirs(spec["dir"], exist_ok=True)
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

"""Speed of the knowledge pipeline on amazon-beauty (ReaSeq, arXiv 2512.21257, Section 2.1).

Measures, as a user runs them (``python -m recbole_reaseq.knowledge ...`` in a fresh process,
imports included):

1. ``cold``: ``build encode`` in one process -- the offline MAKR backend (all three agent
   layers), then all-MiniLM-L6-v2 on the demand and attribute texts -- for all 12,101 items, from
   an empty artefact folder. Goal: <= 120 s on 2 cores.
2. ``cached rerun``: the same commands again; every step is fresh and skipped. Goal: <= 5 s.
3. ``forced replay``: ``build --force``: all agent layers rerun, every answer from the LLM cache
   (zero backend requests). Informational.
4. ``quantize``: RQ-VAE (defaults of :func:`recbole_reaseq.knowledge.pipeline.quantize`) on the
   knowledge embeddings. Informational.

Writes ``benchmarks/results/knowledge_speed.{md,csv}`` with the machine (cores, CPU model from
/proc/cpuinfo), package versions, threads, seed and configuration. The artefacts stay in
``--artifact_dir`` (default ``artifacts/knowledge_speed``, git-ignored, emptied at the start),
so that ``python -m recbole_reaseq.knowledge evaluate --dataset amazon-beauty --artifact_dir
artifacts/knowledge_speed`` can reuse them.

Usage (on a shared machine keep it polite)::

    nice -n 10 python benchmarks/knowledge_speed.py --threads 1

NOTE: timings include process start-up and imports (about 3 s here), since that is what the
goals are about; the per-phase timings inside the manifests exclude them.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.common import cpu_model  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
DATASET = "amazon-beauty"
GOALS = {"cold": 120.0, "cached rerun": 5.0}


def run(cmd: list, env: dict) -> float:
    """Run ``cmd``; return its wall time in seconds (raise with its output on failure)."""
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
        raise SystemExit(f"command failed (exit {proc.returncode}): {' '.join(cmd)}")
    print(proc.stdout.strip(), flush=True)
    return wall


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data_path", default=None)
    ap.add_argument("--artifact_dir", default="artifacts/knowledge_speed")
    ap.add_argument("--out_dir", default=str(REPO_ROOT / "benchmarks" / "results"))
    ap.add_argument("--threads", type=int, default=1, help="torch / BLAS threads")
    ap.add_argument("--seed", type=int, default=0, help="RQ-VAE seed")
    args = ap.parse_args()

    sys.path.insert(0, str(REPO_ROOT))
    from recbole_reaseq.config import DatasetNotFoundError
    from recbole_reaseq.knowledge import pipeline as P
    from recbole_reaseq.knowledge.items import dataset_folder

    try:
        folder = dataset_folder(DATASET, args.data_path)
    except DatasetNotFoundError as exc:
        print(f"knowledge_speed: {DATASET} is not available, nothing measured.\n{exc}",
              file=sys.stderr)
        return 2
    if not os.path.isfile(os.path.join(folder, f"{DATASET}.item")):
        print(f"knowledge_speed: {folder} has no {DATASET}.item; nothing measured.",
              file=sys.stderr)
        return 2

    art = (REPO_ROOT / args.artifact_dir).resolve() if not os.path.isabs(args.artifact_dir) \
        else Path(args.artifact_dir)
    paths = P.artifact_paths(DATASET, str(art))
    if paths.root.exists():  # our own benchmark folder: start cold
        shutil.rmtree(paths.root)
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads),
               TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    base = [sys.executable, "-m", "recbole_reaseq.knowledge"]
    common = ["--dataset", DATASET, "--artifact_dir", str(art), "--threads", str(args.threads),
              "--quiet"] + (["--data_path", args.data_path] if args.data_path else [])

    phases = []
    print("== cold: build + encode", flush=True)
    phases.append(("cold", "build + encode (empty artefact folder)",
                   run(base + ["build", "encode", *common], env)))
    build_cold = P.read_manifest(paths, "build")
    print("== cached rerun: build + encode", flush=True)
    phases.append(("cached rerun", "build + encode (all fresh, skipped)",
                   run(base + ["build", "encode", *common], env)))
    print("== forced replay: build --force", flush=True)
    phases.append(("forced replay", "build --force (answers from the LLM cache)",
                   run(base + ["build", "--force", *common], env)))
    print("== quantize", flush=True)
    phases.append(("quantize", "quantize (RQ-VAE, pipeline defaults)",
                   run(base + ["quantize", "--seed", str(args.seed), *common], env)))

    build_m = P.read_manifest(paths, "build")  # of the forced replay
    encode_m = P.read_manifest(paths, "encode")
    quant_m = P.read_manifest(paths, "quantize")
    versions = P.package_versions()
    machine = {"cpu_model": cpu_model(), "logical_cores": os.cpu_count(),
               "platform": platform.platform(), "load_avg_at_end": os.getloadavg()}
    config = {"dataset": DATASET, "backend": build_m["key"]["backend"],
              "backend_model": build_m["key"]["model"],
              "build_settings": build_m["key"]["settings"],
              "encoder": encode_m["key"]["encoder"]["name"],
              "encode_batch_size": encode_m["encoder"]["batch_size"],
              "normalize": encode_m["key"]["normalize"], "threads": args.threads,
              "rqvae": quant_m["key"]["settings"], "seed": args.seed}

    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for phase, what, wall in phases:
        goal = GOALS.get(phase)
        rows.append({"phase": phase, "what": what, "wall_s": round(wall, 2),
                     "goal_s": goal if goal is not None else "",
                     "met": ("yes" if wall <= goal else "no") if goal is not None else "",
                     "items": build_m["counts"]["items"], "threads": args.threads,
                     "logical_cores": machine["logical_cores"], "cpu_model": machine["cpu_model"]})
    with open(out / "knowledge_speed.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)

    load = tuple(round(x, 2) for x in machine["load_avg_at_end"])
    busy = (" (above the core count: other processes shared the CPU)"
            if load[0] > (machine["logical_cores"] or 1) else "")

    def fmt(d: dict) -> str:
        return ", ".join(f"{k} {v:.2f}" for k, v in d.items())

    lines = [
        f"# Knowledge pipeline speed on {DATASET}",
        "",
        f"Produced by `python benchmarks/knowledge_speed.py --threads {args.threads}` at niceness "
        f"{os.nice(0)} (each phase = fresh `python -m recbole_reaseq.knowledge` processes, "
        "start-up and imports included).",
        "",
        "| phase | what | wall (s) | goal (s) | met |",
        "|---|---|---|---|---|",
    ] + [f"| {r['phase']} | {r['what']} | {r['wall_s']:.2f} | {r['goal_s']} | {r['met']} |"
         for r in rows] + [
        "",
        "## Inside the cold run (from the manifests, seconds)",
        "",
        f"- build (cold): {fmt(build_cold['timings'])}",
        f"- build (forced replay from the cache): {fmt(build_m['timings'])}",
        f"- encode: {fmt(encode_m['timings'])}",
        f"- quantize: {fmt(quant_m['timings'])}",
        "",
        "## Counts",
        "",
        f"- items {build_m['counts']['items']}, categories {build_m['counts']['categories']}, "
        f"subcategories {build_m['counts']['subcategories']}; MAKR requests: cold run "
        f"{build_cold['usage']['requests']} to the backend, forced replay "
        f"{build_m['usage']['requests']} to the backend + {build_m['usage']['cache_hits']} "
        f"cache hits",
        f"- grounding rate {build_m['grounding_rate']:.4f} "
        f"({build_m['counts']['evidence_grounded']}/{build_m['counts']['evidence_total']} "
        f"evidence strings)",
        f"- texts {encode_m['counts']['texts']}, distinct non-empty texts embedded "
        f"{encode_m['counts']['unique_texts']}, dim {encode_m['counts']['dim']}",
        f"- RQ-VAE: utilisation {[round(u, 3) for u in quant_m['report']['utilisation']]}, "
        f"entropy_norm {[round(e, 3) for e in quant_m['report']['entropy_norm']]}, collision rate "
        f"{quant_m['report']['collision_rate']:.4f}, unique codes {quant_m['report']['n_unique']}"
        f"/{quant_m['report']['n_items']}, recon_rel {quant_m['report']['recon_rel']:.4f}",
        "",
        "## Machine, versions, configuration",
        "",
        f"- CPU: {machine['cpu_model']}, {machine['logical_cores']} logical cores "
        f"({machine['platform']}); load average at the end {load}{busy}",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()),
        "- config: `" + json.dumps(config, sort_keys=True) + "`",
        "",
    ]
    (out / "knowledge_speed.md").write_text("\n".join(lines), encoding="utf-8")
    print(f"wrote {out / 'knowledge_speed.md'} and {out / 'knowledge_speed.csv'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

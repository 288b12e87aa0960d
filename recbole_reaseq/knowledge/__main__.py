"""Command line of the knowledge pipeline (ReaSeq, arXiv 2512.21257, Section 2.1 / Appendix C).

::

    python -m recbole_reaseq.knowledge {build,encode,quantize,evaluate,all} [...] --dataset NAME
        [--data_path DIR] [--artifact_dir DIR] [--backend offline|openai --base-url URL
        --model NAME] [--encoder PATH] [--levels 3 --codes 256 ...] [--force]

Several commands run in order in one process (``build encode``). Each step is skipped when its
artefacts are fresh (see :mod:`.pipeline`); ``--force`` reruns it
(LLM answers still come from the cache). The OpenAI API key is read from the environment only
(``REASEQ_LLM_API_KEY`` or ``OPENAI_API_KEY``), never from the command line.

NOTE: ``--threads`` defaults to torch's own choice; pass ``--threads 1`` on a shared machine.
"""
from __future__ import annotations

import argparse
import logging
import sys
from typing import Any, Dict, List, Optional, Sequence

from . import pipeline

COMMANDS = ("build", "encode", "quantize", "evaluate", "all")


def _ints(text: str) -> List[int]:
    return [int(t) for t in text.replace(",", " ").split()]


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m recbole_reaseq.knowledge",
        description="ReaSeq reasoning-enhanced item representations: MAKR knowledge (build), "
                    "text embeddings (encode), RQ-VAE semantic IDs (quantize), HR@k table "
                    "(evaluate).")
    p.add_argument("command", nargs="+", choices=COMMANDS,
                   help="one or more steps, run in pipeline order; all = every step")
    p.add_argument("--dataset", required=True, help="data set name, e.g. ml-100k, amazon-beauty")
    p.add_argument("--data_path", "--data-path", default=None,
                   help="parent folder of <dataset>/ (default: RecBole's ml-100k, "
                        "$REASEQ_DATA_PATH, ../shared/datasets, ./dataset)")
    p.add_argument("--artifact_dir", "--artifact-dir", default="artifacts",
                   help="artefact root; files go to <artifact_dir>/<dataset>/knowledge/")
    p.add_argument("--force", action="store_true", help="rerun steps even when fresh")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    g = p.add_argument_group("build (multi-agent knowledge reasoning)")
    g.add_argument("--backend", choices=("offline", "openai"), default="offline")
    g.add_argument("--base-url", "--base_url", dest="base_url", default=None,
                   help="OpenAI-compatible endpoint, e.g. https://api.openai.com/v1 "
                        "(default $REASEQ_LLM_BASE_URL)")
    g.add_argument("--model", dest="llm_model", default=None,
                   help="LLM model name (default $REASEQ_LLM_MODEL)")
    g.add_argument("--max-concurrency", "--max_concurrency", dest="max_concurrency", type=int,
                   default=None)
    g.add_argument("--batch-size", "--batch_size", dest="batch_size", type=int, default=40,
                   help="Layer 1 items per request")
    g.add_argument("--sample-size", "--sample_size", dest="sample_size", type=int, default=20,
                   help="Layer 2 items sampled per subcategory")
    g.add_argument("--category-level", dest="category_level", type=int, default=None)
    g.add_argument("--subcategory-depth", dest="subcategory_depth", type=int, default=None)
    g = p.add_argument_group("encode")
    g.add_argument("--encoder", default=None,
                   help="sentence-transformers directory or cached name (default: bundled "
                        "all-MiniLM-L6-v2)")
    g.add_argument("--normalize", action="store_true", help="L2-normalise perspectives and sum")
    g.add_argument("--encode-batch-size", dest="encode_batch_size", type=int, default=64)
    g.add_argument("--device", default="cpu")
    g = p.add_argument_group("quantize (RQ-VAE)")
    g.add_argument("--levels", type=int, default=3)
    g.add_argument("--codes", type=int, default=256, help="codebook size per level")
    g.add_argument("--latent-dim", dest="latent_dim", type=int, default=32)
    g.add_argument("--hidden-dims", dest="hidden_dims", type=_ints, default=[],
                   help="encoder MLP widths, e.g. '256,128' (default: linear)")
    g.add_argument("--epochs", type=int, default=100)
    g.add_argument("--rq-batch-size", dest="rq_batch_size", type=int, default=256)
    g.add_argument("--dead-code-steps", dest="dead_code_steps", type=int, default=20)
    g.add_argument("--lr", type=float, default=1e-3)
    g.add_argument("--seed", type=int, default=0)
    g = p.add_argument_group("evaluate")
    g.add_argument("--ks", type=_ints, default=list(pipeline.DEFAULT_KS))
    g.add_argument("--out_dir", "--out-dir", dest="out_dir", default="benchmarks/results")
    g.add_argument("--sasrec_checkpoint", "--sasrec-checkpoint", dest="sasrec_checkpoint",
                   default=None, help="RecBole SASRec .pth: adds its ID embeddings to the table")
    g.add_argument("--no-faiss", dest="use_faiss", action="store_false")
    g.add_argument("--index", default="flat", help="neighbour search: flat (exact), ivf or hnsw "
                   "(approximate, for large catalogues; the GSU's gsu_index options)")
    g.add_argument("--nlist", type=int, default=None, help="ivf: k-means lists (default ~4 sqrt N)")
    g.add_argument("--nprobe", type=int, default=16, help="ivf: lists searched per query")
    g.add_argument("--hnsw-m", "--hnsw_m", dest="hnsw_m", type=int, default=32,
                   help="hnsw: neighbours per node")
    g.add_argument("--ef-search", "--ef_search", dest="ef_search", type=int, default=128,
                   help="hnsw: search beam")
    g.add_argument("--ef-construction", "--ef_construction", dest="ef_construction", type=int,
                   default=40, help="hnsw: build beam")
    return p


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    if isinstance(value, list):
        return "[" + ", ".join(_fmt(v) for v in value) + "]"
    return str(value)


def report(step: str, manifest: Dict[str, Any]) -> str:
    """Short human-readable summary of one step's manifest."""
    state = manifest.get("status", "?")
    note = " -- up to date, skipped; figures recorded when it was built" if state == "fresh" else ""
    lines = [f"== {step}: {state} (fingerprint {str(manifest.get('fingerprint'))[:12]}){note}"]
    if manifest.get("stale_reasons"):
        lines.append("   rebuilt because: " + "; ".join(manifest["stale_reasons"][:5]))
    if step == "build":
        c = manifest.get("counts", {})
        b = manifest.get("backend", {})
        lines.append(f"   backend {b.get('backend')} / {b.get('model')}; items {c.get('items')}, "
                     f"categories {c.get('categories')}, subcategories {c.get('subcategories')}")
        lines.append(f"   grounding rate {_fmt(manifest.get('grounding_rate'))} "
                     f"({c.get('evidence_grounded')}/{c.get('evidence_total')} evidence), "
                     f"entries kept {c.get('entries_kept')}/{c.get('entries_total')}, items "
                     f"without knowledge {c.get('items_without_knowledge')}")
        u = manifest.get("usage", {})
        lines.append(f"   usage: requests {u.get('requests')}, cache hits {u.get('cache_hits')}, "
                     f"re-asks {u.get('reasks')}, retries {u.get('retries')}, tokens "
                     f"{u.get('total_tokens')}")
    elif step == "encode":
        c = manifest.get("counts", {})
        lines.append(f"   encoder {manifest.get('encoder', {}).get('name')}; items {c.get('items')}"
                     f", dim {c.get('dim')}, unique texts {c.get('unique_texts')}/{c.get('texts')}"
                     f", empty demand/attribute {c.get('empty_demand_texts')}/"
                     f"{c.get('empty_attribute_texts')}")
    elif step == "quantize":
        r = manifest.get("report", {})
        lines.append(f"   RQ-VAE utilisation {_fmt(r.get('utilisation'))}, entropy_norm "
                     f"{_fmt(r.get('entropy_norm'))}")
        lines.append(f"   collision rate {_fmt(r.get('collision_rate'))}, unique codes "
                     f"{r.get('n_unique')}/{r.get('n_items')}, max group {r.get('max_group_size')}"
                     f", recon_rel {_fmt(r.get('recon_rel'))}")
    elif step == "evaluate":
        lines.append(manifest.get("table", ""))
        for path in manifest.get("written", []):
            lines.append(f"   wrote {path}")
    t = manifest.get("timings", {})
    if t:
        lines.append("   timings: " + ", ".join(f"{k} {v:.2f}" for k, v in t.items()))
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = make_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    progress = not args.quiet
    common = {"data_path": args.data_path, "artifact_dir": args.artifact_dir,
              "progress": progress}
    build_kw = {"backend": args.backend, "base_url": args.base_url, "llm_model": args.llm_model,
                "max_concurrency": args.max_concurrency, "batch_size": args.batch_size,
                "sample_size": args.sample_size, "category_level": args.category_level,
                "subcategory_depth": args.subcategory_depth}
    encode_kw = {"model": args.encoder, "normalize": args.normalize,
                 "batch_size": args.encode_batch_size, "device": args.device}
    quantize_kw = {"levels": args.levels, "codes": args.codes, "latent_dim": args.latent_dim,
                   "hidden_dims": args.hidden_dims, "epochs": args.epochs,
                   "batch_size": args.rq_batch_size, "lr": args.lr,
                   "dead_code_steps": args.dead_code_steps, "seed": args.seed,
                   "device": args.device}
    evaluate_kw = {"ks": args.ks, "out_dir": args.out_dir,
                   "sasrec_checkpoint": args.sasrec_checkpoint, "use_faiss": args.use_faiss,
                   "index": {"index": args.index, "nlist": args.nlist, "nprobe": args.nprobe,
                             "hnsw_m": args.hnsw_m, "ef_search": args.ef_search,
                             "ef_construction": args.ef_construction},
                   "batch_size": args.encode_batch_size, "device": args.device}
    steps = [s for s in pipeline.STEPS if s in args.command or "all" in args.command]
    try:
        for step in steps:
            if step == "build":
                m = pipeline.build(args.dataset, force=args.force, **common, **build_kw)
            elif step == "encode":
                m = pipeline.encode(args.dataset, force=args.force, **common, **encode_kw)
            elif step == "quantize":
                m = pipeline.quantize(args.dataset, force=args.force, **common, **quantize_kw)
            else:
                m = pipeline.evaluate(args.dataset, **common, **evaluate_kw)
            print(report(step, m), flush=True)
    except (pipeline.StaleUpstreamError, FileNotFoundError, KeyError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    paths = pipeline.artifact_paths(args.dataset, args.artifact_dir)
    print(f"artefacts: {paths.root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

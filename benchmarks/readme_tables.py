"""Regenerate the result tables quoted in README.md from the stored runs.

    python benchmarks/readme_tables.py            # rewrite README.md's marked blocks
    python benchmarks/readme_tables.py --print    # print them instead

Each table sits between ``<!-- NAME -->`` and ``<!-- /NAME -->`` in README.md and is built from
one suite (:data:`BLOCKS`) with :mod:`benchmarks.report` (same runs, same paired test): mean ±
std over the seeds that exist, and the difference to the suite's ``baseline`` with its 95 % CI and
Wilcoxon p (▲/▼: p < 0.05). CTR blocks: AUC, GAUC, LogLoss, cold / hot GAUC, Δ GAUC (per-user
AUC). Ranking blocks: HR@10, NDCG@10, MRR@10 under full ranking, Δ NDCG@10 (per-user NDCG@10),
and the CTR-track GAUC of the same early-stopped model.
"""
from __future__ import annotations

import argparse
import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
from benchmarks.report import (PAIRED, choose_baseline, collect, epoch_seconds,  # noqa: E402
                               fit_seconds, fmt_p, mean_std, mixed_tables, significance)
from benchmarks.run import expand, load_suite  # noqa: E402
from benchmarks.stats import marker  # noqa: E402

README = os.path.join(os.path.dirname(HERE), "README.md")
# README marker -> (suite file name, track[, baseline if not the suite's])
BLOCKS = {
    "LEADERBOARD": ("leaderboard_beauty", "ctr"),
    "LEADERBOARD_RANKING": ("leaderboard_beauty", "ranking"),
    "LEADERBOARD_COST": ("leaderboard_beauty", "cost"),
    "LEADERBOARD_ML100K": ("leaderboard_ml100k", "ctr"),
    "LEADERBOARD_ML100K_RANKING": ("leaderboard_ml100k", "ranking"),
    "LEADERBOARD_ML100K_COST": ("leaderboard_ml100k", "cost"),
    "GSU_K_ML100K": ("gsu_k_ml100k", "ctr"),
    "TABLE3": ("table3_beauty", "ctr"),
    "TABLE4": ("table4_beauty", "ctr"),
    "ML100K": ("table3_ml100k", "ctr"),
    "TABLE6": ("table6_beauty", "ctr"),
    "TABLE6_ML100K": ("table6_ml100k", "ctr"),
    "TABLE6_CENTRED": ("table6_centred_beauty", "ctr"),
    "GBR_REASEQCTR": ("gbr_reaseqctr_beauty", "ctr"),
    "LATENT": ("latent_reasoning_beauty", "ranking"),
}
CTR = ("auc", "gauc", "logloss", "cold/gauc", "hot/gauc")
RANKING = ("hit@10", "ndcg@10", "mrr@10")


def delta(test: dict | None) -> tuple[str, str]:
    """(Δ in points [95 % CI], p with marker) of a paired test, or dashes."""
    if not test:
        return "–", "–"
    return (f"{test['mean_diff'] * 100:+.2f} pt [{test['ci_low'] * 100:+.2f}, "
            f"{test['ci_high'] * 100:+.2f}]", fmt_p(test["p_wilcoxon"]) + marker(test))


def cost_block(table: dict) -> str:
    """Training cost per model (each run counted once, on the protocol it was trained on)."""
    lines = ["| model | track trained on | seeds | epochs | s / epoch | train s | peak MiB |",
             "|---|---|---|---|---|---|---|"]
    for (dataset, protocol), models in sorted(table.items()):
        for name, runs in models.items():
            if "(early-stopped on" in name:
                continue
            res = [r["result"] for r in runs]
            epochs = [r["epochs_trained"] + r.get("start_epoch", 0) for r in res]
            secs = [s for r in res for s in epoch_seconds(r)]
            # resumed before epochs.jsonl existed: the time of the inherited epochs is unknown
            partial = any(r.get("start_epoch", 0) > 0 and "fit_seconds_before_resume" not in r
                          for r in res)
            lines.append(f"| {name} | {protocol} | {len(runs)} | {sum(epochs) / len(epochs):.0f} "
                         f"| {f'{sum(secs) / len(secs):.0f}' if secs else '–'} | "
                         f"{sum(fit_seconds(r) for r in res) / len(res):.0f}"
                         f"{' *' if partial else ''} | {max(r['peak_rss_mb'] for r in res):.0f} |")
    return "\n".join(lines + ["", "\\* resumed before epoch times were logged: the time of the "
                                   "epochs before the resume is missing."])


def block(suite: dict, track: str, baseline: str | None = None) -> str:
    """The Markdown table of one suite's ``track`` (every data set of the suite, in order),
    paired against ``baseline`` (default: the suite's); ``track="cost"``: :func:`cost_block`."""
    table = collect(expand(suite))
    if track == "cost":
        return cost_block(table)
    wanted = baseline or suite.get("baseline")
    lines, chosen = [], []
    for (dataset, protocol), models in sorted(table.items()):
        if protocol != track:
            continue
        baseline = choose_baseline(wanted, models, protocol)
        chosen.append(baseline)
        tests = significance(models, baseline, PAIRED[track][0]) if baseline else {}
        for name, runs in models.items():
            cols = CTR if track == "ctr" else RANKING
            cells = [mean_std([r["test"][m] for r in runs if m in r["test"]]) for m in cols]
            cells += list(delta(tests.get(name)))
            if track == "ranking":
                ctr = table.get((dataset, "ctr"), {}).get(f"{name} (early-stopped on ranking)", [])
                cells.append(mean_std([r["test"]["gauc"] for r in ctr if "gauc" in r["test"]]))
            mark = " †" if mixed_tables(runs) else ""     # seeds read different frozen tables
            lines.append(f"| {name}{mark} | {len(runs)} | " + " | ".join(cells) + " |")
    against = ("/".join(dict.fromkeys(b for b in chosen if b))
               or (wanted if isinstance(wanted, str) else "the best baseline"))
    if track == "ctr":
        head = (f"| model | seeds | AUC | GAUC | LogLoss | cold GAUC | hot GAUC | Δ GAUC vs "
                f"{against} [95 % CI] | p (Wilcoxon) |")
    else:
        head = (f"| model | seeds | HR@10 | NDCG@10 | MRR@10 | Δ {PAIRED[track][1]} vs "
                f"{against} [95 % CI] | p (Wilcoxon) | CTR-track GAUC |")
    return "\n".join([head, "|" + "---|" * head.count(" | ") + "---|"] + lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Regenerate README.md's result tables.")
    parser.add_argument("--print", action="store_true", help="print instead of rewriting")
    parser.add_argument("--readme", default=README)
    args = parser.parse_args(argv)
    with open(args.readme, encoding="utf-8") as f:
        text = f.read()
    for key, (name, track, *baseline) in BLOCKS.items():
        body = block(load_suite(os.path.join(HERE, "suites", f"{name}.yaml")), track, *baseline)
        if args.print:
            print(f"<!-- {key} -->\n{body}\n")
            continue
        pattern = rf"<!-- {key} -->.*?<!-- /{key} -->"
        if not re.search(pattern, text, flags=re.S):
            raise KeyError(f"{args.readme} has no <!-- {key} --> ... <!-- /{key} --> block. Fix: "
                           f"add the two markers where the {name} table belongs.")
        text = re.sub(pattern, lambda m: f"<!-- {key} -->\n{body}\n<!-- /{key} -->", text,
                      flags=re.S)
    if not args.print:
        with open(args.readme, "w", encoding="utf-8") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

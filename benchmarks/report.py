"""Turn a suite's stored run results into Markdown + CSV tables (mean ± std over seeds).

    python benchmarks/report.py benchmarks/suites/baselines_beauty.yaml

Writes ``benchmarks/results/<suite>.md`` and ``.csv``: one table per (data set, protocol), with
the protocol's metrics on the test split, epochs trained, seconds per training epoch, total
training time and peak memory, and the machine and commit of the runs. If the suite names a
``baseline`` run (or a list of runs: the best of them per table, see :func:`choose_baseline`),
the tables where it has results get a paired significance table against it
(:mod:`benchmarks.stats`, paired across users and seeds; CTR track: per-user test AUC, marked on
the GAUC cells; ranking track: per-user test NDCG@10, marked on the NDCG@10 cells): ▲ / ▼
significantly above / below the baseline (Wilcoxon, p < 0.05). Times of resumed runs include the
epochs trained before the interruption (``fit_seconds_before_resume``). With ``--plots``
a PNG per CTR table (test GAUC per model, mean ± std over seeds, overall / cold / hot) is
written next to the Markdown.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
from benchmarks.run import expand, load_suite  # noqa: E402
from benchmarks.stats import marker, paired_test  # noqa: E402

METRICS = {
    "ranking": ["hit@10", "ndcg@10", "mrr@10", "hit@20", "ndcg@20"],
    "ctr": ["auc", "gauc", "logloss", "hit@10", "ndcg@10", "cold/gauc", "hot/gauc"],
}
# per protocol: (per-user metric of the paired test, its label, the table cell that gets ▲/▼)
PAIRED = {"ctr": ("auc", "AUC", "gauc"), "ranking": ("ndcg@10", "NDCG@10", "ndcg@10")}


def mean_std(values: list[float]) -> str:
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


def collect(specs: list[dict]) -> dict:
    """{(dataset, protocol): {name: [result, ...]}} including other-protocol evaluations."""
    table: dict = {}
    for spec in specs:
        path = os.path.join(spec["dir"], "result.json")
        if not os.path.isfile(path):
            continue
        with open(path, encoding="utf-8") as f:
            result = json.load(f)
        entries = [(spec["protocol"], result["test_result"], True)]
        entries += [(proto, res["test"], False)
                    for proto, res in (result.get("other_protocols") or {}).items()]
        for protocol, test, trained_on in entries:
            row = table.setdefault((spec["dataset"], protocol), {}).setdefault(
                f"{spec['name']}" + ("" if trained_on else f" (early-stopped on {spec['protocol']})"),
                [])
            row.append({"test": test, "result": result, "dir": spec["dir"],
                        "protocol": protocol})
    return table


def per_user(run: dict, metric: str = "auc"):
    """(user ids, per-user metric) of a stored run on its protocol, or None."""
    import numpy as np

    path = os.path.join(run["dir"], "per_user_test.npz")
    if not os.path.isfile(path):
        return None
    with np.load(path) as z:
        key = f"{run['protocol']}__{metric}"
        if key not in z:
            return None
        return z[f"{run['protocol']}__user_id"], z[key]


def choose_baseline(baseline, models: dict, protocol: str):
    """The row of one (data set, protocol) table that the paired test compares against.

    ``baseline`` is the suite's key: one run name (used as it is), or a list of run names,
    meaning the best of them on this table: among the listed rows with the most seeds, the
    highest mean test value of the protocol's marked metric (CTR track: GAUC; ranking track:
    NDCG@10). Seeds come first so that one lucky seed of an unfinished row does not become the
    baseline of rows that have all theirs. A row ``NAME (early-stopped on P)`` (a model scored
    on the track it was not trained on) counts as ``NAME``. None if the suite names no baseline
    or none of the listed ones has a result on this table."""
    if baseline is None or isinstance(baseline, str):
        return baseline
    marked = PAIRED[protocol][2]
    best = None
    for name, runs in models.items():
        if name.split(" (early-stopped on ")[0] not in baseline:
            continue
        values = [r["test"][marked] for r in runs if marked in r["test"]]
        key = (len(values), statistics.mean(values)) if values else None
        if key and (best is None or key > best[0]):
            best = (key, name)
    return best[1] if best else None


def baseline_note(baseline, chosen: str, protocol: str) -> str:
    """How the report names the chosen baseline: ``chosen``, and for a list, how it was chosen."""
    if isinstance(baseline, str):
        return chosen
    return (f"{chosen}, the best of the baselines {', '.join(baseline)} on this track (most "
            f"seeds, then mean test {PAIRED[protocol][2].upper()})")


def significance(models: dict, baseline: str, metric: str = "auc") -> dict:
    """{model name: paired_test result} against the baseline on a per-user metric (CTR track:
    AUC; ranking track: NDCG@10)."""
    if baseline not in models:
        return {}
    base = {r["result"]["seed"]: per_user(r, metric) for r in models[baseline]}
    base = {s: v for s, v in base.items() if v is not None}
    out = {}
    for name, runs in models.items():
        if name == baseline:
            continue
        mine = {r["result"]["seed"]: per_user(r, metric) for r in runs}
        mine = {s: v for s, v in mine.items() if v is not None}
        if set(mine) & set(base):
            out[name] = paired_test(mine, base)
    return out


def fit_seconds(result: dict) -> float:
    """Training time of a run, including the epochs it inherited when resumed."""
    return result["fit_seconds"] + result.get("fit_seconds_before_resume", 0.0)


def epoch_seconds(result: dict) -> list:
    return list(result.get("epoch_seconds_before_resume") or []) + list(result["epoch_seconds"])


def fmt_p(p: float) -> str:
    return "–" if p != p else (f"{p:.1e}" if p < 1e-3 else f"{p:.3f}")


def mixed_tables(runs: list[dict]) -> list[str]:
    """Frozen tables (``frozen_tables`` of the results, see
    :func:`recbole_reaseq.quick_start.frozen_table_fingerprints`) that differ between the seeds
    of one row; results without the record (older runs) are not compared."""
    seen: dict = {}
    for run in runs:
        for name, digest in (run["result"].get("frozen_tables") or {}).items():
            seen.setdefault(name, set()).add(digest)
    return sorted(name for name, digests in seen.items() if len(digests) > 1)


def render(suite: dict, table: dict) -> tuple[str, list[dict]]:
    lines = [f"# {suite['suite']}", "", suite.get("description", "").strip(), ""]
    rows = []
    first = None
    for (dataset, protocol), models in sorted(table.items()):
        metrics = METRICS[protocol]
        baseline = choose_baseline(suite.get("baseline"), models, protocol)
        paired, label, marked = PAIRED[protocol]
        tests = significance(models, baseline, paired) if baseline else {}
        lines += [f"## {dataset}: {protocol} track", "",
                  "| model | seeds | " + " | ".join(metrics)
                  + " | epochs | s/epoch | train s | peak MiB |",
                  "|---|---|" + "---|" * len(metrics) + "---|---|---|---|"]
        mixed = {}
        for name, runs in models.items():
            first = first or runs[0]["result"]
            mixed[name] = mixed_tables(runs)
            values = {m: [r["test"][m] for r in runs if m in r["test"]] for m in metrics}
            epochs = [r["result"]["epochs_trained"] + r["result"].get("start_epoch", 0)
                      for r in runs]
            sec = [statistics.mean(epoch_seconds(r["result"])) for r in runs
                   if epoch_seconds(r["result"])]
            fit = [fit_seconds(r["result"]) for r in runs]
            mem = [r["result"]["peak_rss_mb"] for r in runs]
            cells = [mean_std(values[m]) + (marker(tests[name]) if m == marked and name in tests
                                            else "") for m in metrics]
            lines.append(f"| {name}{' †' if mixed[name] else ''} | {len(runs)} | "
                         + " | ".join(cells)
                         + f" | {statistics.mean(epochs):.0f} | "
                         + (f"{statistics.mean(sec):.1f}" if sec else "–")
                         + f" | {statistics.mean(fit):.0f} | {max(mem):.0f} |")
            for r in runs:
                rows.append({"dataset": dataset, "protocol": protocol, "model": name,
                             "seed": r["result"]["seed"], **{m: r["test"].get(m) for m in metrics},
                             "epochs": r["result"]["epochs_trained"] + r["result"].get("start_epoch", 0),
                             "sec_per_epoch": (statistics.mean(epoch_seconds(r["result"]))
                                               if epoch_seconds(r["result"]) else None),
                             "fit_seconds": fit_seconds(r["result"]),
                             "peak_rss_mb": r["result"]["peak_rss_mb"],
                             "git_commit": r["result"]["git_commit"]})
        lines.append("")
        for name, tables in mixed.items():
            if tables:
                lines.append(f"† {name}: its seeds read different frozen tables "
                             f"({', '.join(tables)}), e.g. artefacts rebuilt between runs.")
        if any(mixed.values()):
            lines.append("")
        if tests:
            delta = "ΔGAUC" if protocol == "ctr" else f"Δ{label}"
            lines += [f"Paired test against {baseline_note(suite['baseline'], baseline, protocol)}"
                      f" (per-user test {label}, differences "
                      "averaged over the seeds both have; ▲/▼ = Wilcoxon p < 0.05):", "",
                      f"| model | seeds | users | {delta} [95 % CI] | p Wilcoxon | p t | "
                      "p seeds (t) |", "|---|---|---|---|---|---|---|"]
            for name, t in tests.items():
                lines.append(f"| {name} | {t['seeds']} | {t['n_users']} | "
                             f"{t['mean_diff']:+.4f} [{t['ci_low']:+.4f}, {t['ci_high']:+.4f}] | "
                             f"{fmt_p(t['p_wilcoxon'])}{marker(t)} | {fmt_p(t['p_t'])} | "
                             f"{fmt_p(t['p_seed'])} |")
                for row in rows:
                    if (row["dataset"], row["protocol"], row["model"]) == (dataset, protocol, name):
                        row.update({f"vs_{baseline}_{marked}_diff": t["mean_diff"],
                                    f"vs_{baseline}_p_wilcoxon": t["p_wilcoxon"]})
            lines.append("")
    if first:
        m = first["machine"]
        commits = list(dict.fromkeys(r["result"].get("git_commit", "?")[:10]
                                     for models in table.values() for runs in models.values()
                                     for r in runs))
        code = (f"Commit `{commits[0]}`" if len(commits) == 1 else
                f"Runs from {len(commits)} commits (each run's result.json names its own), "
                f"first `{commits[0]}`, last `{commits[-1]}` in table order")
        lines += [f"Machine: {m['cores']} cores ({m['cpu']}), torch {m['torch']} with "
                  f"{m['torch_threads']} threads, Python {m['python']}. {code}. Regenerate: "
                  f"`python benchmarks/run.py {suite['_path']} && python benchmarks/report.py "
                  f"{suite['_path']}`.", ""]
    return "\n".join(lines), rows


def plot(suite: dict, table: dict, out: str) -> list[str]:
    """One PNG per CTR table: test GAUC (overall / cold / hot) per model, mean ± std over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    written = []
    for (dataset, protocol), models in sorted(table.items()):
        if protocol != "ctr":
            continue
        names = list(models)
        fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(names)), 4))
        width = 0.27
        for k, (metric, label) in enumerate((("gauc", "overall"), ("cold/gauc", "cold-start"),
                                             ("hot/gauc", "hot"))):
            vals = [[r["test"][metric] for r in models[n] if metric in r["test"]] for n in names]
            mean = [statistics.mean(v) if v else np.nan for v in vals]
            std = [statistics.stdev(v) if len(v) > 1 else 0.0 for v in vals]
            ax.bar(np.arange(len(names)) + (k - 1) * width, mean, width, yerr=std, capsize=3,
                   label=label)
        finite = [r["test"][m] for n in names for r in models[n]
                  for m in ("gauc", "cold/gauc", "hot/gauc") if m in r["test"]]
        ax.set_ylim(min(finite) - 0.02, max(finite) + 0.01)
        ax.set_xticks(np.arange(len(names)))
        ax.set_xticklabels(names, rotation=30, ha="right", fontsize=8)
        ax.set_ylabel("test GAUC (mean ± std over seeds)")
        ax.set_title(f"{suite['suite']}: {dataset}, CTR track")
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = os.path.join(out, f"{suite['suite']}_{dataset}_ctr_gauc.png")
        fig.savefig(path, dpi=120)
        plt.close(fig)
        written.append(path)
    return written


def main(argv=None):
    parser = argparse.ArgumentParser(description="Markdown + CSV report of a benchmark suite.")
    parser.add_argument("suite")
    parser.add_argument("--out", default=os.path.join(HERE, "results"))
    parser.add_argument("--plots", action="store_true", help="also write PNG plots")
    args = parser.parse_args(argv)
    suite = load_suite(args.suite)
    suite["_path"] = os.path.relpath(args.suite, os.path.dirname(HERE))
    table = collect(expand(suite))
    markdown, rows = render(suite, table)
    os.makedirs(args.out, exist_ok=True)
    base = os.path.join(args.out, suite["suite"])
    with open(base + ".md", "w", encoding="utf-8") as f:
        f.write(markdown)
    if rows:
        fields = list(dict.fromkeys(k for row in rows for k in row))
        with open(base + ".csv", "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            writer.writerows(rows)
    if args.plots:
        plot(suite, table, args.out)
    print(markdown)


if __name__ == "__main__":
    main()

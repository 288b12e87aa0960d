"""Turn a suite's stored run results into Markdown + CSV tables (mean ± std over seeds).

    python benchmarks/report.py benchmarks/suites/baselines_beauty.yaml

Writes ``benchmarks/results/<suite>.md`` and ``.csv``: one table per (data set, protocol), with
the protocol's metrics on the test split (valid in brackets where asked), epochs trained, seconds
per training epoch, total training time and peak memory, and the machine and commit of the runs.
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

METRICS = {
    "ranking": ["hit@10", "ndcg@10", "mrr@10", "hit@20", "ndcg@20"],
    "ctr": ["auc", "gauc", "logloss", "hit@10", "ndcg@10", "cold/gauc", "hot/gauc"],
}


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
            row.append({"test": test, "result": result})
    return table


def render(suite: dict, table: dict) -> tuple[str, list[dict]]:
    lines = [f"# {suite['suite']}", "", suite.get("description", "").strip(), ""]
    rows = []
    first = None
    for (dataset, protocol), models in sorted(table.items()):
        metrics = METRICS[protocol]
        lines += [f"## {dataset}: {protocol} track", "",
                  "| model | seeds | " + " | ".join(metrics)
                  + " | epochs | s/epoch | train s | peak MiB |",
                  "|---|---|" + "---|" * len(metrics) + "---|---|---|---|"]
        for name, runs in models.items():
            first = first or runs[0]["result"]
            values = {m: [r["test"][m] for r in runs if m in r["test"]] for m in metrics}
            epochs = [r["result"]["epochs_trained"] + r["result"].get("start_epoch", 0)
                      for r in runs]
            sec = [statistics.mean(r["result"]["epoch_seconds"]) for r in runs
                   if r["result"]["epoch_seconds"]]
            fit = [r["result"]["fit_seconds"] for r in runs]
            mem = [r["result"]["peak_rss_mb"] for r in runs]
            cells = [mean_std(values[m]) for m in metrics]
            lines.append(f"| {name} | {len(runs)} | " + " | ".join(cells)
                         + f" | {statistics.mean(epochs):.0f} | "
                         + (f"{statistics.mean(sec):.1f}" if sec else "–")
                         + f" | {statistics.mean(fit):.0f} | {max(mem):.0f} |")
            for r in runs:
                rows.append({"dataset": dataset, "protocol": protocol, "model": name,
                             "seed": r["result"]["seed"], **{m: r["test"].get(m) for m in metrics},
                             "epochs": r["result"]["epochs_trained"] + r["result"].get("start_epoch", 0),
                             "sec_per_epoch": (statistics.mean(r["result"]["epoch_seconds"])
                                               if r["result"]["epoch_seconds"] else None),
                             "fit_seconds": r["result"]["fit_seconds"],
                             "peak_rss_mb": r["result"]["peak_rss_mb"],
                             "git_commit": r["result"]["git_commit"]})
        lines.append("")
    if first:
        m = first["machine"]
        lines += [f"Machine: {m['cores']} cores ({m['cpu']}), torch {m['torch']} with "
                  f"{m['torch_threads']} threads, Python {m['python']}. Commit "
                  f"`{first['git_commit'][:10]}`. Regenerate: `python benchmarks/run.py "
                  f"{suite['_path']} && python benchmarks/report.py {suite['_path']}`.", ""]
    return "\n".join(lines), rows


def main(argv=None):
    parser = argparse.ArgumentParser(description="Markdown + CSV report of a benchmark suite.")
    parser.add_argument("suite")
    parser.add_argument("--out", default=os.path.join(HERE, "results"))
    args = parser.parse_args(argv)
    suite = load_suite(args.suite)
    suite["_path"] = os.path.relpath(args.suite, os.path.dirname(HERE))
    markdown, rows = render(suite, collect(expand(suite)))
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
    print(markdown)


if __name__ == "__main__":
    main()

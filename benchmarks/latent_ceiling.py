"""Performance ceiling of the latent-reasoning models: the best reasoning step per user (oracle).

ReaRec's post-hoc analysis ("Think Before Recommend", arXiv 2503.22675) scores every user with
each reasoning step's output and keeps, per user, the step that ranks the target best: an oracle
step selector. The paper reports that this ceiling is about 30-50 % above the backbone's. This
script measures it on the trained runs of ``suites/latent_reasoning_beauty.yaml`` (test split,
full ranking, RecBole's own evaluation of each view, history items masked as in training runs):

* every view a model can score with: ReaRec ``step 0`` (= the encoder state h_0) .. ``step R``;
  PLR ``h0`` and ``stream 1 .. S``; plus the model's own output (ERL: the mean of the steps; PRL:
  the last step; PLR: the gated mixture), which must reproduce the stored test result (checked);
* the oracle: per user, the best NDCG@10 (and HR@10) over the views (own output excluded);
* controls with the same selection effect: the oracle over the 3 SASRec seeds (3 independently
  trained backbones, the ReaRec step count is R + 1 = 3), from their stored per-user metrics.

An oracle is not a deployable model: it reads the test target. It says how much better a
per-user choice among the model's views COULD be, which is what the paper's claim measures.

Writes benchmarks/results/latent_ceiling.{md,csv}.

    python benchmarks/latent_ceiling.py [--suite benchmarks/suites/latent_reasoning_beauty.yaml]
"""
import argparse
import glob
import os
import sys
import tempfile

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.common import (cpu_model, markdown_table, write_csv,  # noqa: E402
                               write_markdown)
from benchmarks.run import expand, load_suite, stored_result  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
METRICS = ("ndcg@10", "hit@10")


def latent_views(model, item_seq, item_seq_len):
    """``(names, views [B, V, H])``: every user vector a latent-reasoning model can score with.
    ReaRec: the step outputs h_0 .. h_R (``step 0`` is the encoder state); PLR: h_0 and the S
    streams. The model's own output is a function of these (ERL mean, PRL last, PLR gate)."""
    from recbole_reaseq.model.plr import PLR
    from recbole_reaseq.model.rearec import ReaRec

    if isinstance(model, ReaRec):
        steps, _ = model.reason(item_seq, item_seq_len)                        # [B, R+1, H]
        return [f"step {k}" for k in range(steps.shape[1])], steps
    if isinstance(model, PLR):
        h0, streams = model.streams(item_seq, item_seq_len)                    # [B, H], [B, S, H]
        names = ["h0"] + [f"stream {s + 1}" for s in range(streams.shape[1])]
        return names, torch.cat([h0.unsqueeze(1), streams], 1)                 # [B, S+1, H]
    raise TypeError(f"latent_views: {type(model).__name__} is neither ReaRec nor PLR")


def oracle(per_view: np.ndarray) -> np.ndarray:
    """Per-user best over views: ``[V, U] -> [U]``."""
    return per_view.max(0)


def aligned(per_user: dict, users: np.ndarray) -> dict:
    """``per_user`` metric arrays reordered to ``users`` (every user must be present)."""
    index = {u: i for i, u in enumerate(per_user["user_id"].tolist())}
    missing = [u for u in users.tolist() if u not in index]
    if missing:
        raise ValueError(f"{len(missing)} users lack per-user metrics (first: {missing[:3]})")
    order = np.array([index[u] for u in users.tolist()])
    return {m: np.asarray(per_user[m])[order] for m in METRICS}


def evaluate_views(spec: dict, result: dict) -> tuple[np.ndarray, dict, tuple]:
    """Reload the run's checkpoint; (users, {view name: {metric: [U]}}, (mean pairwise cosine
    of the views, of the views after the first = the reasoning outputs) over the test users),
    own output included as ``own``, which must reproduce the stored test metrics."""
    from recbole_reaseq.model.plr import stream_similarity
    from recbole_reaseq.quick_start import build_trainer, evaluate_protocol, load_data_and_model

    checkpoints = sorted(glob.glob(os.path.join(spec["dir"], "*.pth")), key=os.path.getmtime)
    if not checkpoints:
        raise FileNotFoundError(f"{spec['run_id']}: no checkpoint in {spec['dir']}")
    cwd = os.getcwd()
    with tempfile.TemporaryDirectory() as scratch:
        os.chdir(scratch)                                   # RecBole's logger writes ./log
        try:
            config, model, dataset, _, _, test_data = load_data_and_model(
                checkpoints[-1], {"checkpoint_dir": scratch, "reaseq_epoch_log": None,
                                  "state": "WARNING"})
            trainer = build_trainer(config, model, dataset)
            model.eval()
            test, per_user = evaluate_protocol(trainer, test_data, "ranking", dataset)
            off = {k: (test[k], v) for k, v in result["test_result"].items()
                   if k in test and abs(test[k] - v) > 2e-6}
            if off:
                raise RuntimeError(f"{spec['run_id']}: the checkpoint does not reproduce the "
                                   f"stored test result: {off}")
            users = np.asarray(per_user["user_id"])
            views = {"own": aligned(per_user, users)}
            cosines, weights = [], []             # rows: all views, the views after the first
            with torch.no_grad():
                for inter, *_ in test_data:                     # how alike the views are
                    names, vectors = latent_views(model, inter[model.ITEM_SEQ],
                                                  inter[model.ITEM_SEQ_LEN])    # [B, V, H]
                    cosines.append([float(stream_similarity(vectors)) * len(vectors),
                                    float(stream_similarity(vectors[:, 1:])) * len(vectors)])
                    weights.append(len(vectors))
            for v, name in enumerate(names):
                model.forward = (lambda seq, length, v=v:
                                 latent_views(model, seq, length)[1][:, v])    # [B, H]
                try:
                    _, per_user = evaluate_protocol(trainer, test_data, "ranking", dataset)
                finally:
                    del model.forward                           # back to the class's forward
                views[name] = aligned(per_user, users)
        finally:
            os.chdir(cwd)
    return users, views, tuple(np.sum(cosines, 0) / sum(weights))


def stored_per_user(spec: dict, users: np.ndarray) -> dict:
    with np.load(os.path.join(spec["dir"], "per_user_test.npz")) as z:
        per_user = {"user_id": z["ranking__user_id"],
                    **{m: z[f"ranking__{m}"] for m in METRICS}}
    return aligned(per_user, users)


def rows_for(name: str, seed, views: dict, base: dict, cosine=(None, None),
             base_name: str = "SASRec") -> list:
    """Table rows: each view, the oracle over the views (own output excluded), ratios to the
    model's own output and to the baseline ``base_name`` (``base``: {metric: [U]});
    ``cosine`` (the mean pairwise cosine of all views, of the reasoning outputs) goes on the
    oracle row."""
    chosen = [v for v in views if v != "own"]
    best = {m: oracle(np.stack([views[v][m] for v in chosen])) for m in METRICS}
    out = []
    for view, metrics in list(views.items()) + [(f"oracle over {len(chosen)}", best)]:
        row = {"model": name, "seed": seed, "view": view}
        for m in METRICS:
            row[m] = float(metrics[m].mean())
        row["ndcg@10 / own"] = (row["ndcg@10"] / float(views["own"]["ndcg@10"].mean())
                                if "own" in views else None)
        row[f"ndcg@10 / {base_name}"] = row["ndcg@10"] / float(base["ndcg@10"].mean())
        row["cosine: all views"] = cosine[0] if view.startswith("oracle") else None
        row["cosine: reasoning outputs"] = cosine[1] if view.startswith("oracle") else None
        out.append(row)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", default=os.path.join(HERE, "suites",
                                                        "latent_reasoning_beauty.yaml"))
    parser.add_argument("--baseline", default="SASRec")
    args = parser.parse_args(argv)
    specs = expand(load_suite(args.suite))
    finished = [(spec, result) for spec in specs
                for result in [stored_result(spec)] if result is not None]
    baselines = {s["seed"]: s for s, _ in finished if s["name"] == args.baseline}
    rows, users = [], None
    for spec, result in finished:
        if spec["model"] not in ("ReaRec", "PLR") or spec["seed"] not in baselines:
            continue
        print(f"[views] {spec['run_id']}", flush=True)
        users, views, cosine = evaluate_views(spec, result)
        base = stored_per_user(baselines[spec["seed"]], users)
        rows += rows_for(spec["name"], spec["seed"], views, base, cosine, args.baseline)
    if users is None:
        print("no finished ReaRec / PLR run with a same-seed baseline")
        return 1
    base_views = {f"{args.baseline} seed {seed}": stored_per_user(spec, users)
                  for seed, spec in sorted(baselines.items())}
    first = base_views[next(iter(base_views))]
    rows += rows_for(args.baseline, "all", base_views, first, base_name=args.baseline)
    out = os.path.join(HERE, "results", "latent_ceiling")
    write_csv(out + ".csv", rows)
    shown = [{k: (f"{v:.4f}" if isinstance(v, float) and k in METRICS else
                  f"{v:.3f}" if isinstance(v, float) else "–" if v is None else v)
              for k, v in r.items()} for r in rows]
    text = ["# Latent reasoning: performance ceiling (oracle view per user)", "",
            f"Suite `{os.path.relpath(args.suite, os.path.dirname(HERE))}`, test split, full "
            "ranking (RecBole's evaluation of each view; the model's own output reproduces the "
            "stored test result). A model's views: ReaRec step 0 (the encoder state h_0) .. "
            "step R; PLR h_0 and its streams. \"oracle over n\": per user, the best of the n "
            "views, so it reads the test target: a ceiling, not a model. Ratios: NDCG@10 over "
            f"the model's own output and over {args.baseline} of the same seed; the "
            f"{args.baseline} rows are its seeds as views (ratio column: over the first seed), "
            "the control for what picking the best of 3 scorers per user gives without any "
            "reasoning. \"cosine\": the mean pairwise cosine similarity of a model's views "
            "over the test users (1 = the same direction), of all of them and of the reasoning "
            "outputs alone (ReaRec steps 1..R, PLR's streams).", "",
            markdown_table(shown), "",
            f"Command: `python benchmarks/latent_ceiling.py`. Machine: {cpu_model()}."]
    write_markdown(out, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Paired significance tests for the benchmark reports.

A model is compared with the suite's baseline on a per-user test metric (the CTR track's per-user
AUC, whose mean over users is GAUC). Both were scored on the same fixed candidate sets, so every
user gives a paired difference. Seeds are paired too: for each user, the differences of the seeds
both models have are averaged (``d_u = mean_s [m_s(u) - b_s(u)]``), and the tests run across users
on ``d_u``:

* Wilcoxon signed-rank (two-sided, zero differences dropped), the marker in the tables;
* paired t (two-sided), with a 95 % confidence interval of the mean difference.

The mean of ``d_u`` is exactly the difference of the seed-averaged GAUCs when every user has an
AUC. The seed-level test (one overall number per seed) is also returned for completeness; with 3
seeds it has little power, which is why the per-user test is the one marked.
"""
from __future__ import annotations

import math
from typing import Dict, Mapping, Sequence

import numpy as np
from scipy import stats as sps


def align(user_ids: Sequence[np.ndarray], values: Sequence[np.ndarray]) -> tuple:
    """Restrict several (user_ids, values) runs to the users all have; returns (users, [values])."""
    common = user_ids[0]
    for ids in user_ids[1:]:
        common = np.intersect1d(common, ids)
    out = []
    for ids, vals in zip(user_ids, values):
        order = np.argsort(ids)
        pos = order[np.searchsorted(ids, common, sorter=order)]
        out.append(np.asarray(vals, dtype=np.float64)[pos])
    return common, out


def paired_test(model: Mapping[int, tuple], baseline: Mapping[int, tuple]) -> Dict[str, float]:
    """Per-user paired test of ``model`` against ``baseline``.

    Each argument maps seed -> (user_ids [U], per-user metric [U]). Only the seeds both have are
    used; users are matched by id (users missing from any run are dropped). Returns n_users,
    seeds, mean_diff, ci_low, ci_high, t, p_t, w, p_wilcoxon, and p_seed (paired t over the
    per-seed means; NaN with fewer than 2 seeds).
    """
    seeds = sorted(set(model) & set(baseline))
    if not seeds:
        raise ValueError("no seed in common between the model and the baseline; run the same "
                         "seeds for both (suite key 'seeds')")
    ids = [model[s][0] for s in seeds] + [baseline[s][0] for s in seeds]
    vals = [model[s][1] for s in seeds] + [baseline[s][1] for s in seeds]
    users, aligned = align(ids, vals)
    m = np.stack(aligned[:len(seeds)])                     # [S, U]
    b = np.stack(aligned[len(seeds):])                     # [S, U]
    keep = np.isfinite(m).all(0) & np.isfinite(b).all(0)
    diff = (m - b)[:, keep].mean(0)                        # [U]
    n = int(diff.size)
    mean = float(diff.mean())
    sd = float(diff.std(ddof=1)) if n > 1 else float("nan")
    half = float(sps.t.ppf(0.975, n - 1)) * sd / math.sqrt(n) if n > 1 else float("nan")
    t, p_t = sps.ttest_1samp(diff, 0.0)
    nonzero = diff[diff != 0]
    if nonzero.size:
        w, p_w = sps.wilcoxon(nonzero, zero_method="wilcox", alternative="two-sided")
    else:
        w, p_w = float("nan"), 1.0
    if len(seeds) > 1:
        seed_m, seed_b = m[:, keep].mean(1), b[:, keep].mean(1)
        p_seed = float(sps.ttest_rel(seed_m, seed_b).pvalue)
    else:
        p_seed = float("nan")
    return {"n_users": n, "seeds": len(seeds), "mean_diff": mean, "ci_low": mean - half,
            "ci_high": mean + half, "t": float(t), "p_t": float(p_t), "w": float(w),
            "p_wilcoxon": float(p_w), "p_seed": p_seed}


def marker(result: Mapping[str, float], alpha: float = 0.05) -> str:
    """``▲`` significantly better, ``▼`` significantly worse (Wilcoxon, two-sided), ``""`` not."""
    if not result or not result["p_wilcoxon"] < alpha:
        return ""
    return "▲" if result["mean_diff"] > 0 else "▼"

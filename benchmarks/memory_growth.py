"""Peak memory of one ReaSeqCTR (and DIN) training step vs history length L, GSU K and anchors M.

One forward + backward of ``calculate_loss`` on a batch of 256 training rows whose histories all
have the full length L (the worst case of a batch), on a synthetic data set with amazon-beauty's
item count (12,101 items, with categories / brand / price side features like Beauty).
ReaSeqCTR's frozen item tables have Beauty's shapes (384-d knowledge embeddings as from MiniLM,
3 SID levels of 256 codes + a collision level) but random values: the knowledge pipeline is
replaced by random tables of the same shape, since memory depends on shapes, not values.

Every measurement runs in a fresh subprocess (``--one``): data set and model are built, one
warm-up step is taken (lazy allocations, thread pools), gradients are dropped, freed heap is given
back (``malloc_trim``), the kernel's peak-RSS counter is reset (``/proc/self/clear_refs`` = 5) and
the resident size is read; then the measured step runs and the peak (``VmHWM``) is read again.
``step_peak_mb`` = peak during the step - resident before it: activations, autograd buffers and
gradients of one step (the model, data and optimizer state are not included). glibc is told to
serve every allocation over 64 KiB by mmap (``MALLOC_MMAP_THRESHOLD_``), so freed tensors leave
the resident set at once and the counter follows live tensor memory. torch has no allocator
statistics for CPU tensors, hence RSS.

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/memory_growth.py

Writes benchmarks/results/memory_growth.{md,csv}.
"""
import argparse
import csv
import ctypes
import gc
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
HERE = os.path.dirname(os.path.abspath(__file__))

N_ITEMS = 12101            # amazon-beauty
BATCH = 256
KNOWLEDGE_DIM = 384        # MiniLM, as Beauty's knowledge_emb
SID_LEVELS, SID_CODES = 4, 256
BASE = {"L": 100, "K": 10, "M": 4}
GRID = ([dict(BASE, L=v) for v in (20, 50, 100, 200)]
        + [dict(BASE, K=v) for v in (5, 10, 20, 50)]
        + [dict(BASE, M=v) for v in (2, 4, 8, 16)])


def write_dataset(root: str, max_len: int, seed: int = 0) -> None:
    """``BATCH`` users with ``max_len + 3`` interactions each (so each has a full-length training
    row), items uniform over N_ITEMS; Beauty's item schema."""
    rng = np.random.default_rng(seed)
    folder = os.path.join(root, "memsynth")
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "memsynth.inter"), "w") as f:
        f.write("user_id:token\titem_id:token\ttimestamp:float\n")
        for u in range(BATCH):
            items = rng.integers(1, N_ITEMS + 1, size=max_len + 3)
            f.writelines(f"u{u}\ti{i}\t{1_000_000 + 60 * t}\n" for t, i in enumerate(items))
    with open(os.path.join(folder, "memsynth.item"), "w") as f:
        f.write("item_id:token\ttitle:token_seq\tcategories:token_seq\tbrand:token\tprice:float\n")
        for i in range(1, N_ITEMS + 1):
            cats = " ".join(f"c{int(c)}" for c in rng.integers(0, 60, size=3))
            f.write(f"i{i}\titem {i}\tBeauty {cats}\tb{int(rng.integers(0, 2000))}"
                    f"\t{rng.uniform(1, 100):.2f}\n")


def rss_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def measure_one(model_name: str, L: int, K: int, M: int, workdir: str) -> dict:
    import torch
    from recbole.data.interaction import Interaction

    import recbole_reaseq.model.reaseqctr as reaseqctr
    from recbole_reaseq.model.item_repr import ItemRepresentations
    from recbole_reaseq.quick_start import build_model, make_config, prepare_data

    def random_tables(config, dataset, knowledge=True, sid=True, **_):
        g = torch.Generator().manual_seed(0)
        n = dataset.item_num
        out = ItemRepresentations(missing={})
        if knowledge:
            out.knowledge_emb = torch.randn(n, KNOWLEDGE_DIM, generator=g)
            out.knowledge_field = "knowledge_emb"
        if sid:
            out.sid = torch.randint(2, SID_CODES + 2, (n, SID_LEVELS), generator=g)
            out.sid[0] = 0
            out.sid_vocab = [SID_CODES + 2] * SID_LEVELS
        return out

    reaseqctr.load_item_representations = random_tables
    torch.set_num_threads(1)
    write_dataset(workdir, L)
    config = make_config(model_name, "memsynth", config_dict={
        "data_path": workdir, "MAX_ITEM_LIST_LENGTH": L, "gsu_top_k": K, "n_anchors": M,
        "load_col": {"inter": ["user_id", "item_id", "timestamp"],
                     "item": ["item_id", "categories", "brand", "price"]},
        "checkpoint_dir": os.path.join(workdir, "saved"), "state": "ERROR",
        "reaseq_artifact_dir": os.path.join(workdir, "artifacts"), "eval_protocol": "ctr"})
    _ds, train, _valid, _test = prepare_data(config)
    model = build_model(config, train)
    model.train()
    data = train._dataset
    full = np.flatnonzero(data.inter_feat[config["ITEM_LIST_LENGTH_FIELD"]].numpy() == L)
    rows = data[torch.as_tensor(full[:BATCH])]
    if len(rows) != BATCH:
        raise RuntimeError(f"only {len(rows)} full-length rows")
    labels = torch.arange(BATCH) % 2                      # half positives, half negatives
    rows.update(Interaction({config["LABEL_FIELD"]: labels.float()}))
    n_params = sum(p.numel() for p in model.parameters())

    def step():
        model.calculate_loss(rows).backward()

    step()                                                # warm-up
    model.zero_grad(set_to_none=True)
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")                                      # reset VmHWM to the current RSS
    before = rss_kb("VmRSS")
    t = time.perf_counter()
    step()
    seconds = time.perf_counter() - t
    peak = rss_kb("VmHWM")
    return {"model": model_name, "L": L, "K": K if model_name == "ReaSeqCTR" else "-",
            "M": M if model_name == "ReaSeqCTR" else "-", "batch": BATCH,
            "params_M": round(n_params / 1e6, 3), "rss_before_mb": round(before / 1024, 1),
            "step_peak_mb": round((peak - before) / 1024, 1), "step_s": round(seconds, 3)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--one", help=argparse.SUPPRESS)          # JSON of one measurement
    parser.add_argument("--out", default=os.path.join(HERE, "results", "memory_growth"))
    args = parser.parse_args()
    if args.one:
        spec = json.loads(args.one)
        with tempfile.TemporaryDirectory() as work:
            os.chdir(work)
            print("RESULT " + json.dumps(measure_one(spec["model"], spec["L"], spec["K"],
                                                     spec["M"], work)))
        return

    specs, seen = [], set()
    for point in GRID:
        key = (point["L"], point["K"], point["M"])
        if key not in seen:
            seen.add(key)
            specs.append(dict(point, model="ReaSeqCTR"))
    specs += [dict(BASE, L=v, model="DIN") for v in (20, 50, 100, 200)]
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", OMP_NUM_THREADS="1",
               PYTHONWARNINGS="ignore")
    rows = []
    for spec in specs:
        proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--one",
                               json.dumps(spec)], capture_output=True, text=True, env=env)
        line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if proc.returncode or not line:
            raise RuntimeError(f"{spec} failed:\n{proc.stderr[-3000:]}")
        rows.append(json.loads(line[0][len("RESULT "):]))
        print(rows[-1], flush=True)
        write(args.out, rows)


def write(out: str, rows: list) -> None:
    from benchmarks.common import cpu_model

    os.makedirs(os.path.dirname(out), exist_ok=True)
    cols = list(rows[0])
    with open(out + ".csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        w.writerows(rows)
    lines = ["# Memory growth of one training step (forward + backward, batch 256)", "",
             "Generated by `OMP_NUM_THREADS=1 nice -n 10 python benchmarks/memory_growth.py`.", "",
             f"- synthetic data with amazon-beauty's item count ({N_ITEMS:,}) and item schema; "
             f"every row of the batch has a full-length history of L items",
             f"- ReaSeqCTR: its defaults (properties/model/ReaSeqCTR.yaml) except L, K "
             f"(gsu_top_k), M (n_anchors); frozen tables of Beauty's shapes ({KNOWLEDGE_DIM}-d "
             f"knowledge embedding, {SID_LEVELS} SID levels), random values. One factor varies "
             f"at a time around L={BASE['L']}, K={BASE['K']}, M={BASE['M']}",
             "- DIN: RecBole's DIN with our DIN defaults, same data and L",
             "- step_peak_mb = peak RSS during the measured step - RSS just before it (fresh "
             "subprocess, after a warm-up step; peak counter reset through /proc/self/clear_refs; "
             "glibc mmap threshold 64 KiB so freed tensors leave RSS); excludes model, data and "
             "optimizer state (params_M = parameters, millions)",
             f"- machine: {cpu_model()}, 1 torch thread, shared with other jobs (step_s is "
             "indicative only)", "",
             "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(r[c]) for c in cols) + " |" for r in rows]
    with open(out + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()

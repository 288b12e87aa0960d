"""Helpers shared by the benchmark scripts."""
import csv
import os
import platform


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (platform.processor() elsewhere)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def write_csv(path: str, rows: list) -> None:
    """``rows`` (dicts with the same keys) as CSV at ``path``, header from the first row; the
    folder is created."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def write_markdown(stem: str, lines: list) -> None:
    """``lines`` joined as ``<stem>.md`` (the folder is created), and printed."""
    os.makedirs(os.path.dirname(stem) or ".", exist_ok=True)
    with open(stem + ".md", "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


def markdown_table(rows: list) -> str:
    """``rows`` (dicts with the same keys) as a Markdown table, header from the first row."""
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    lines += ["| " + " | ".join(str(v) for v in row.values()) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def interleaved_training_steps(variants: list, steps: int, warmup: int = 0) -> None:
    """Time ``steps`` training steps (forward + backward + optimiser) of every variant, batch by
    batch in turn, so machine load hits all alike. Each variant is a dict with ``model``, ``opt``
    and ``train`` (a RecBole train loader); adds ``seconds``, ``batches`` and the history
    ``cells`` / ``real`` (non-padding) counts of the timed batches. ``warmup`` steps run first,
    untimed."""
    import time

    iters = [iter(v["train"]) for v in variants]
    for v in variants:
        v.update(seconds=0.0, batches=0, cells=0, real=0)
    for step in range(warmup + steps):
        for v, it in zip(variants, iters):
            batch = next(it)
            start = time.perf_counter()
            loss = v["model"].calculate_loss(batch)
            v["opt"].zero_grad()
            loss.backward()
            v["opt"].step()
            if step >= warmup:
                v["seconds"] += time.perf_counter() - start
                seq = batch["item_id_list"]
                v["cells"] += seq.numel()
                v["real"] += int((seq > 0).sum())
                v["batches"] += 1

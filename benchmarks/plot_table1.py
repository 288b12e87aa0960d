"""HR@k curves of the Table 1 analogue (representation quality), from the stored CSVs.

    python benchmarks/plot_table1.py   # reads benchmarks/results/representations_<dataset>.csv
    -> benchmarks/results/representations_hr_curves.png (one panel per data set)
"""
import csv
import glob
import os

HERE = os.path.dirname(os.path.abspath(__file__))


def main():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = sorted(glob.glob(os.path.join(HERE, "results", "representations_*.csv")))
    if not files:
        raise FileNotFoundError("no benchmarks/results/representations_*.csv: run "
                                "python -m recbole_reaseq.knowledge evaluate --dataset NAME first")
    fig, axes = plt.subplots(1, len(files), figsize=(6 * len(files), 4), squeeze=False)
    for ax, path in zip(axes[0], files):
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        ks = [int(c[3:]) for c in rows[0] if c.startswith("HR@")]
        for row in rows:
            ax.plot(ks, [float(row[f"HR@{k}"]) for k in ks], "o-", label=row["representation"])
        ax.set_xscale("log")
        ax.set_xticks(ks)
        ax.set_xticklabels([str(k) for k in ks])
        ax.set_xlabel("k (cosine neighbours per history item)")
        ax.set_ylabel("HR@k of the held-out item")
        ax.set_title(os.path.basename(path)[len("representations_"):-4])
        ax.legend(fontsize=7)
    fig.tight_layout()
    out = os.path.join(HERE, "results", "representations_hr_curves.png")
    fig.savefig(out, dpi=120)
    print(out)


if __name__ == "__main__":
    main()

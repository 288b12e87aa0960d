"""Command line of Generative Behavior Reasoning (ReaSeq, arXiv 2512.21257, Section 3).

::

    python -m recbole_reaseq.gbr {locate,train,augment,all} --dataset NAME [--rule TC]
        [--loss softmax|cosine|euclidean] [--weighting mean|inv_t] [--epochs N]
        [--batch-size B] [--threads 1] [--data-path P] [--artifact-dir DIR] [...]

* ``locate``: gaps U and labelled positions L on the training view; prints the ratios.
* ``train``: trains (or resumes) the reasoner; prints per-epoch IB metrics.
* ``augment``: stores the filled vectors (needs a finished ``train``).
* ``all``: the three in one process.

Files go to ``<artifact-dir>/<dataset>/gbr/<variant>/`` (variant = the Table 5 name, e.g.
``GBR-C-0``). Rerunning is cheap: training resumes after its last finished epoch, a fresh
augmentation is reused.

NOTE: ``--threads`` defaults to torch's own choice; pass ``--threads 1`` on a shared machine.
"""
from __future__ import annotations

import argparse
import logging
import sys
from typing import Any, Dict, Optional, Sequence

from .locate import MissingFieldError
from .reasoner import LOSS_VARIANTS
from .train import GBRConfig

COMMANDS = ("locate", "train", "augment", "all")


def make_parser() -> argparse.ArgumentParser:
    d = GBRConfig(dataset="?")
    p = argparse.ArgumentParser(
        prog="python -m recbole_reaseq.gbr",
        description="ReaSeq Generative Behavior Reasoning: locate beyond-log gaps and labelled "
                    "positions (locate), train the bidirectional reasoner (train), store the "
                    "filled vectors for GBR-DIN (augment), or all three.")
    p.add_argument("command", choices=COMMANDS)
    p.add_argument("--dataset", required=True, help="data set name, e.g. amazon-beauty, ml-100k")
    p.add_argument("--data-path", "--data_path", dest="data_path", default=None,
                   help="parent folder of <dataset>/ (default: RecBole's ml-100k, "
                        "$REASEQ_DATA_PATH, ../shared/datasets, ./dataset)")
    p.add_argument("--artifact-dir", "--artifact_dir", dest="artifact_dir", default="artifacts")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--force", action="store_true", help="rebuild the augmentation even if fresh")
    g = p.add_argument_group("location and labels")
    g.add_argument("--rule", default=d.rule, help="T, C, TC (Table 5), TD, CD or TDCD")
    g.add_argument("--eta", type=float, default=d.eta, help="L = {i: delta_i > eta}")
    g.add_argument("--kappa", type=int, default=None,
                   help="stage-2 filter: keep a gap only if the next item ranks worse than kappa")
    g.add_argument("--time-percentile", dest="time_percentile", type=float,
                   default=d.time_percentile, help="TD threshold percentile of positive gaps")
    g.add_argument("--category-level", dest="category_level", type=int, default=None)
    g.add_argument("--knowledge-field", dest="knowledge_field", default=d.knowledge_field)
    g.add_argument("--center-repr", dest="center_repr", action="store_true",
                   help="centre the item representations (remove the catalogue's mean "
                        "direction; GBRDIN must then set center_repr: True too)")
    g = p.add_argument_group("reasoner and training")
    g.add_argument("--loss", default=d.loss, help=f"one of {', '.join(LOSS_VARIANTS)}")
    g.add_argument("--weighting", default=d.weighting, help="mean or inv_t (LLaDA's 1/t)")
    g.add_argument("--epochs", type=int, default=d.epochs)
    g.add_argument("--schedule-epochs", dest="schedule_epochs", type=int,
                   default=d.schedule_epochs, help="length of the warm-up + cosine schedule")
    g.add_argument("--batch-size", dest="batch_size", type=int, default=d.batch_size)
    g.add_argument("--lr", type=float, default=d.lr)
    g.add_argument("--seed", type=int, default=d.seed)
    g.add_argument("--d-model", dest="d_model", type=int, default=d.d_model)
    g.add_argument("--n-layers", dest="n_layers", type=int, default=d.n_layers)
    g.add_argument("--n-heads", dest="n_heads", type=int, default=d.n_heads)
    g.add_argument("--max-len", dest="max_len", type=int, default=d.max_len)
    g.add_argument("--eval-batch-size", dest="eval_batch_size", type=int,
                   default=d.eval_batch_size, help="fixed IB-metric batch (B-1 negatives)")
    g.add_argument("--no-pack", dest="pack", action="store_false",
                   help="run the reasoner on padded batches instead of packed rows (the same "
                        "function, another dropout layout: reproduces reasoners trained before "
                        "packing; not part of the run key)")
    g.add_argument("--context", default=d.context, help="augment: prefix or full")
    g.add_argument("--tag", default=d.tag,
                   help="name suffix of the artefact folder (GBR-C-0-<tag>), e.g. for a "
                        "longer schedule kept beside the untagged run")
    return p


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4f}"
    return str(v)


def report_location(stats: Dict[str, Any]) -> str:
    return "\n".join([
        f"== locate {stats['rule']}: {stats['n_users']} users, {stats['n_items']} training "
        f"behaviours, {stats['n_pairs']} consecutive pairs"
        + (f", time threshold {stats['time_threshold']:.0f} s" if stats.get("time_threshold")
           else ""),
        f"   gaps |U| {stats['n_gaps']} (stage 1 {stats['n_stage1']}, stage-2 keep "
        f"{_fmt(stats['stage2_keep'])}); gap rate {_fmt(stats['gap_rate'])}; [FILL] ratio "
        f"|U| / tokens {_fmt(stats['fill_ratio'])}; users with a gap "
        f"{_fmt(stats['users_with_gap'])}",
        f"   labelled |L| {stats['n_labelled']}; |L| ratio {_fmt(stats['label_ratio'])} "
        f"(eta {stats['eta']})"])


def report_train(m: Dict[str, Any]) -> str:
    f = m.get("final_metrics", {})
    return "\n".join([
        f"== train {m['variant']}: {m['status']}, {m['epochs_done']} epochs "
        f"({m['train_users']} training users, {m['holdout_users']} held out)",
        f"   [MASK] IB-PPL {_fmt(f.get('mask_ppl'))} IB-ACC {_fmt(f.get('mask_acc'))} "
        f"(n {f.get('n_mask')}); [FILL] IB-PPL {_fmt(f.get('fill_ppl'))} IB-ACC "
        f"{_fmt(f.get('fill_acc'))} (n {f.get('n_fill')}); train loss "
        f"{_fmt(f.get('train_loss'))}",
        f"   checkpoint {m['checkpoint']}"])


def report_augment(m: Dict[str, Any]) -> str:
    return (f"== augment {m['variant']}: {m['status']} ({m['context']} context): {m['gaps']} "
            f"filled vectors ({m['dim']}-d) for {m['users_with_fill']} of {m['users']} users, "
            f"[FILL] ratio {_fmt(m['fill_ratio'])}")


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = make_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.threads is not None:
        if args.threads < 1:
            print(f"error: --threads {args.threads} must be >= 1", file=sys.stderr)
            return 2
        import torch

        torch.set_num_threads(args.threads)
    from .augment import augment as run_augment
    from .train import prepare, train as run_train, variant_root

    try:
        cfg = GBRConfig(
            dataset=args.dataset, data_path=args.data_path, artifact_dir=args.artifact_dir,
            rule=args.rule, eta=args.eta, kappa=args.kappa, time_percentile=args.time_percentile,
            category_level=args.category_level, knowledge_field=args.knowledge_field,
            center_repr=args.center_repr, loss=args.loss, weighting=args.weighting, epochs=args.epochs,
            schedule_epochs=args.schedule_epochs, batch_size=args.batch_size, lr=args.lr,
            seed=args.seed, d_model=args.d_model, n_layers=args.n_layers, n_heads=args.n_heads,
            max_len=args.max_len, eval_batch_size=args.eval_batch_size, context=args.context,
            progress=not args.quiet, tag=args.tag, pack=args.pack).check()
        prep = prepare(cfg)
        print(report_location(prep.inputs.stats), flush=True)
        if args.command in ("train", "all"):
            print(report_train(run_train(prep)), flush=True)
        if args.command in ("augment", "all"):
            print(report_augment(run_augment(prep, force=args.force)), flush=True)
    except (MissingFieldError, FileNotFoundError, KeyError, ValueError) as exc:
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"error: {msg}", file=sys.stderr)
        return 2
    print(f"artefacts: {variant_root(cfg.dataset, cfg.variant, cfg.artifact_dir)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

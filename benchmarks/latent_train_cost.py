"""Training-step cost of the latent-reasoning models against SASRec, as ratios.

One training step (``calculate_loss``, backward, Adam step) of SASRec, ReaRec-ERL, ReaRec-PRL
and PLR built as in ``suites/latent_reasoning_beauty.yaml`` on the amazon-beauty shape (12,101
items, MAX_ITEM_LIST_LENGTH 20, batch 512), on the same synthetic batches, in ONE process and
interleaved batch by batch (:func:`benchmarks.common.interleaved_training_steps`), so machine load
hits every model alike. One more row, ``ReaRec-ERL (autograd KL)``, is ReaRec-ERL with its fused
:class:`recbole_reaseq.model.rearec.ErlLoss` replaced, for that row only, by autograd through
the definition (mean CE minus the weight times ``pairwise_kl_diversity``; the same loss and
gradient, tested): the cost that ErlLoss removes. A second table times ReaRec-PRL's step with
denormal floats kept and flushed (``flush_denormal``). Writes
benchmarks/results/latent_train_cost.{md,csv}.

    python benchmarks/latent_train_cost.py [--batch 512] [--steps 10] [--warmup 2]
"""
import argparse
import contextlib
import glob
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.common import cpu_model, interleaved_training_steps, write_csv  # noqa: E402
from benchmarks.inference_cost import (BEAUTY_ITEMS, MAX_LEN, VARIANTS, build,  # noqa: E402
                                       synthetic_users)
from recbole.data.interaction import Interaction  # noqa: E402
from recbole_reaseq.model import rearec  # noqa: E402
from recbole_reaseq.quick_start import denormals_flushed  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


class AutogradErlLoss:
    """Stands in for :class:`rearec.ErlLoss` (same ``apply`` signature): the definition, with
    autograd."""

    @staticmethod
    def apply(logits, target, kl_weight):
        log_probs = F.log_softmax(logits, dim=-1)                              # [B, K, N]
        ce = F.nll_loss(log_probs.reshape(-1, logits.shape[-1]),
                        target.repeat_interleave(logits.shape[1]))
        return ce - kl_weight * rearec.pairwise_kl_diversity(log_probs)


@contextlib.contextmanager
def autograd_erl_loss():
    fused, rearec.ErlLoss = rearec.ErlLoss, AutogradErlLoss
    try:
        yield
    finally:
        rearec.ErlLoss = fused


class Swapping:
    """A model whose ``calculate_loss`` runs inside ``context`` (only for that variant)."""

    def __init__(self, net, context):
        self.net, self.context = net, context

    def calculate_loss(self, batch):
        with self.context():
            return self.net.calculate_loss(batch)


def batches(n_batches, batch_size, seed):
    """Synthetic training batches: right-padded histories (lengths uniform in 1..20) and a
    uniform positive item each."""
    items, lengths = synthetic_users(n_batches * batch_size, seed)
    positives = torch.randint(1, BEAUTY_ITEMS + 1, (n_batches * batch_size,),
                              generator=torch.Generator().manual_seed(seed + 1))
    return [Interaction({"item_id_list": items[i:i + batch_size],
                         "item_length": lengths[i:i + batch_size],
                         "item_id": positives[i:i + batch_size]})
            for i in range(0, n_batches * batch_size, batch_size)]


SASREC_RUN = os.path.join(HERE, "runs", "amazon-beauty",
                          "SASRec__amazon-beauty__ranking__seed2020")


def denormal_effect(data, repeats, seed, checkpoint):
    """ReaRec-PRL with SASRec's trained weights (``checkpoint``; the reasoning position
    embeddings stay initialised): seconds per loss + backward with denormals kept vs flushed,
    alternating step by step (medians), and the share of denormal entries in PRL's
    temperature-scaled softmax over the catalogue on the first batch."""
    variant = build("ReaRec-PRL", "ReaRec", {"rearec_mode": "PRL", "reasoning_steps": 2}, seed)
    net = variant["net"].train()
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)["state_dict"]
    missing = net.load_state_dict(state, strict=False).missing_keys
    assert missing == ["reason_pos_emb.weight"], missing
    with torch.no_grad():
        batch = data[0]
        steps, _ = net.reason(batch["item_id_list"], batch["item_length"])
        logits = steps @ net.item_embedding.weight.t()                         # [B, R+1, N]
        probs = torch.softmax(logits / net.step_temperatures("cpu").view(1, -1, 1), -1)
        share = float(((probs > 0) & (probs < torch.finfo(torch.float32).tiny)).float().mean())
    seconds = {False: [], True: []}
    for step in range(repeats + 1):
        for flush in (False, True):
            with denormals_flushed(flush):
                start = time.perf_counter()
                net.calculate_loss(data[step % len(data)]).backward()
                if step:                                     # the first round is warm-up
                    seconds[flush].append(time.perf_counter() - start)
            net.zero_grad()
    return {"kept": statistics.median(seconds[False]),
            "flushed": statistics.median(seconds[True]), "share": share}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--seed", type=int, default=2020)
    parser.add_argument("--flush-denormal", action="store_true",
                        help="time every model with denormals flushed (quick_start."
                             "denormals_flushed; ReaRec and PLR train so by default)")
    parser.add_argument("--out", default=os.path.join(HERE, "results", "latent_train_cost"))
    args = parser.parse_args()

    data = batches(args.warmup + args.steps, args.batch, args.seed)
    variants = []
    for name, model, overrides in VARIANTS + [("ReaRec-ERL (autograd KL)", "ReaRec",
                                               {"rearec_mode": "ERL", "reasoning_steps": 2})]:
        variant = build(name, model, overrides, args.seed)
        net = variant["net"].train()
        variant.update(opt=torch.optim.Adam(net.parameters(),
                                            lr=variant["config"]["learning_rate"]),
                       train=data,
                       model=Swapping(net, autograd_erl_loss) if "autograd" in name else net)
        variants.append(variant)
    with denormals_flushed(args.flush_denormal):
        interleaved_training_steps(variants, args.steps, warmup=args.warmup)

    checkpoints = sorted(glob.glob(os.path.join(SASREC_RUN, "*.pth")))
    denormal = denormal_effect(data, args.steps, args.seed, checkpoints[0]) if checkpoints else None

    base = variants[0]["seconds"] / variants[0]["batches"]
    erl = next(v for v in variants if v["name"] == "ReaRec-ERL")
    rows = []
    for variant in variants:
        step = variant["seconds"] / variant["batches"]
        rows.append({"model": variant["name"],
                     "config": " ".join(f"{k}={v}" for k, v in variant["overrides"].items()) or "-",
                     "s_per_step": round(step, 4),
                     "ratio_vs_sasrec": round(step / base, 3),
                     "ratio_vs_rearec_erl": round(step / (erl["seconds"] / erl["batches"]), 3)})
    write_csv(args.out + ".csv", rows)
    cfg = variants[0]["config"]
    lines = [
        "# Training-step cost: latent reasoning vs SASRec (amazon-beauty shape)",
        "",
        f"`python benchmarks/latent_train_cost.py --batch {args.batch} --steps {args.steps} "
        f"--warmup {args.warmup}`",
        "",
        f"- Machine: {cpu_model()}; torch {torch.__version__}, {torch.get_num_threads()} torch "
        "thread(s), CPU; other benchmark jobs shared the cores, so absolute times are noisy; "
        "the models were interleaved batch by batch, so the ratios are the number to read.",
        f"- Models: default sizes (n_layers {cfg['n_layers']}, n_heads {cfg['n_heads']}, "
        f"hidden_size {cfg['hidden_size']}), {BEAUTY_ITEMS:,} items + padding, "
        f"MAX_ITEM_LIST_LENGTH {MAX_LEN}, CE over all items, seed {args.seed}. One step = "
        "`calculate_loss` + backward + Adam step on a batch of "
        f"{args.batch} synthetic histories; total of {args.steps} steps after {args.warmup} "
        "untimed warm-up steps.",
        "- `ReaRec-ERL (autograd KL)`: ReaRec-ERL with the loss computed by autograd through "
        "its definition instead of the fused `ErlLoss` (same value and gradient, tested).",
        "",
        "| model | config | s / step | ratio vs SASRec | ratio vs ReaRec-ERL |",
        "|---|---|---|---|---|",
    ]
    lines += ["| " + " | ".join(str(v) for v in row.values()) + " |" for row in rows]
    lines += ["", "## Denormal floats (`flush_denormal`)", ""]
    if denormal is None:
        lines.append(f"Not measured: no trained SASRec checkpoint under {SASREC_RUN} (run "
                     "`benchmarks/run.py benchmarks/suites/latent_reasoning_beauty.yaml --only "
                     "SASRec --seeds 2020` first).")
    else:
        lines += [
            "The models above are untrained: their logits are tiny and no softmax underflows. "
            "A trained model's spread wider: ReaRec-PRL with the weights of SASRec seed 2020 trained on "
            "Beauty (its reasoning position embeddings initialised) divides its logits by its "
            f"step temperatures (1.75, 0.35, 0.07), and {denormal['share']:.1%} of its softmax "
            "entries over the "
            "catalogue are then denormal floats, which x86 CPUs process far more slowly. Loss + "
            f"backward on the same synthetic batches, median of {args.steps} steps, kept and "
            "flushed alternating:",
            "",
            "| denormals | s / loss + backward | ratio |",
            "|---|---|---|",
            f"| kept | {denormal['kept']:.4f} | {denormal['kept'] / denormal['flushed']:.2f} |",
            f"| flushed (`flush_denormal: True`, the ReaRec and PLR default) | "
            f"{denormal['flushed']:.4f} | 1.00 |",
        ]
    with open(args.out + ".md", "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

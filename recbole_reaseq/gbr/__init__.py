"""Generative Behavior Reasoning (GBR), ReaSeq Section 3: building blocks.

Reference: ReaSeq (TaoRank Team, arXiv 2512.21257), Section 3 (3.1 beyond-log behaviour location,
3.2 self-supervised labels and the diffusion-LM reasoner), Section 4.2.1 (IB metrics, Tables 5-6).

* :mod:`.locate` - stage-1 rules TD / CD / TDCD and the Table 5 variants T / C / TC, stage-2
  model-based filter, next-item scorers (Swing co-occurrence, any callable, RecBole models);
* :mod:`.labels` - Δ_i, the labelled set L, the gap set U, and leakage-safe GBR inputs (training
  behaviour only);
* :mod:`.reasoner` - the tiny LLaDA-style bidirectional reasoner, its training sequences, masking,
  loss (softmax / cosine / Euclidean, mean or 1/t weighting) and optimiser;
* :mod:`.metrics` - IB-PPL and IB-ACC on [MASK] and [FILL] tokens;
* :mod:`.train` - the resumable training loop (checkpoint per epoch, IB metrics log, manifest);
* :mod:`.augment` - inference: the filled vectors of every user, stored once with a manifest;
* :mod:`.transform` - ``gbr_augment``, the batch transform feeding them to GBR-DIN
  (:mod:`recbole_reaseq.model.gbrdin`); ``python -m recbole_reaseq.gbr`` is the CLI.
"""
from .labels import (GBRExample, GBRInputs, build_gbr_inputs, delta_scores, labelled_positions,
                     prefix_statistics, training_view)
from .locate import (RULES, TABLE5_RULES, CallableScorer, MissingFieldError, NextItemScorer,
                     SequenceData, SwingScorer, category_label, default_time_threshold,
                     load_sequences, locate_gaps, next_item_ranks, recbole_sequential_scorer,
                     stage1_positions, stage2_filter, swing_similarity)
from .metrics import ib_metrics, sample_negative_positions
from .augment import Augmentation, augment, load_augmentation
from .train import GBRConfig, evaluate_ib, prepare, train, variant_name
from .reasoner import (FILL, ITEM, MASK, PAD, BehaviorReasoner, GBRBatch, ReasonerConfig,
                       apply_mask, build_sequence, collate, fill_predictions, gbr_loss,
                       make_optimizer, sample_mask, training_step, warmup_cosine)

__all__ = [
    "RULES", "TABLE5_RULES", "MissingFieldError", "SequenceData", "category_label",
    "load_sequences", "default_time_threshold", "stage1_positions", "NextItemScorer",
    "SwingScorer", "swing_similarity", "CallableScorer", "recbole_sequential_scorer",
    "next_item_ranks", "stage2_filter", "locate_gaps",
    "training_view", "prefix_statistics", "delta_scores", "labelled_positions", "GBRExample",
    "GBRInputs", "build_gbr_inputs",
    "PAD", "ITEM", "FILL", "MASK", "ReasonerConfig", "BehaviorReasoner", "GBRBatch",
    "build_sequence", "collate", "sample_mask", "apply_mask", "gbr_loss", "warmup_cosine",
    "make_optimizer", "training_step", "fill_predictions",
    "ib_metrics", "sample_negative_positions",
    "GBRConfig", "prepare", "train", "evaluate_ib", "variant_name", "Augmentation", "augment",
    "load_augmentation",
]

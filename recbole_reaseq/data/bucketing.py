"""Length-bucketed training batches, so that ``trim_padding`` has something to trim.

RecBole's train loader draws random batches. On amazon-beauty (mean history 8.9, cap 20) a random
batch of 512 almost always holds one full-length history, so cutting a batch to its longest
sequence saves nothing. :class:`LengthBucketedLoader` wraps RecBole's train loader (no subclass,
no RecBole edit): every epoch it shuffles the rows, cuts the permutation into chunks of
``length_bucketing`` batches, sorts each chunk by history length, cuts it into batches and
shuffles the batch order. Each row is still seen exactly once per epoch; batches hold rows of
similar length, which ``trim_padding`` then cuts to their longest one. Batches are built by the
wrapped loader's own ``collate_fn`` (transforms, negative sampling), so nothing else changes.

NOTE: batches are no longer i.i.d. samples of the training rows (rows of one batch have similar
history lengths); a larger ``length_bucketing`` means more homogeneous batches. The shuffle is
seeded by (``seed``, epoch counter of this loader); a run resumed from a checkpoint restarts the
counter at 0. Not available under DDP (RecBole's ``DistributedSampler`` shards the rows).
"""
from __future__ import annotations

from typing import List

import numpy as np


def bucketed_batches(lengths: np.ndarray, batch_size: int, chunk_batches: int,
                     rng: np.random.Generator) -> List[np.ndarray]:
    """Row indices [n] -> batches: shuffle, sort chunks of ``chunk_batches * batch_size`` rows by
    ``lengths`` (stable), cut into batches of ``batch_size``, shuffle the batch order."""
    if batch_size < 1 or chunk_batches < 1:
        raise ValueError(f"batch_size ({batch_size}) and chunk_batches ({chunk_batches}) must be "
                         ">= 1")
    perm = rng.permutation(len(lengths))
    chunk = chunk_batches * batch_size
    batches = []
    for start in range(0, len(perm), chunk):
        rows = perm[start:start + chunk]
        rows = rows[np.argsort(lengths[rows], kind="stable")]
        batches += [rows[i:i + batch_size] for i in range(0, len(rows), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


class LengthBucketedLoader:
    """A view of RecBole's train loader that yields length-bucketed batches (module doc)."""

    def __init__(self, loader, chunk_batches: int, seed: int, length_field: str):
        if not loader.config["single_spec"]:
            raise ValueError("length_bucketing is not available with distributed training "
                             "(nproc > 1): set length_bucketing: ~")
        if length_field not in loader._dataset.inter_feat.interaction:
            raise KeyError(f"length_bucketing needs the history-length field '{length_field}' "
                           "(ITEM_LIST_LENGTH_FIELD) of a sequential model's training data; set "
                           "length_bucketing: ~ for this model")
        self.loader = loader
        self.chunk_batches = int(chunk_batches)
        self.seed = int(seed)
        self.epoch = 0
        self.lengths = loader._dataset.inter_feat[length_field].numpy()   # [n]

    def __getattr__(self, name):
        return getattr(self.loader, name)

    def __len__(self) -> int:
        step = self.loader.step
        return (len(self.lengths) + step - 1) // step

    def __iter__(self):
        rng = np.random.default_rng([self.seed, self.epoch])
        self.epoch += 1
        for rows in bucketed_batches(self.lengths, self.loader.step, self.chunk_batches, rng):
            yield self.loader.collate_fn(rows.tolist())

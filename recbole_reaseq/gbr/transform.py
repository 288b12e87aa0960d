"""``gbr_augment``: the batch transform that adds GBR's filled behaviours to every history.

Reference: ReaSeq (TaoRank Team, arXiv 2512.21257), Section 3.3 and Table 6 (GBR-augmented DIN:
the reasoner's filled vectors join the observed behaviours).

Installed like every transform of ours (``reaseq_transforms: [gbr_augment]``, composed after
RecBole's own transform on the train, valid AND test loaders by
:func:`recbole_reaseq.data.transforms.install_transforms`). It reads the stored augmentation of
the config's variant (:func:`recbole_reaseq.gbr.augment.load_augmentation`: ``gbr_rule``,
``gbr_loss``, ``gbr_weighting``; checked against the data files) and adds, per row:

* ``gbr_items`` long ``[B, W]``: the augmented token sequence's item ids (0 at a fill or padding);
* ``gbr_fill_index`` long ``[B, W]``: ``r + 1`` at a fill whose vector is row ``r`` of the
  stored ``fills`` table, 0 elsewhere;
* ``gbr_is_fill`` bool ``[B, W]``; ``gbr_length`` long ``[B]`` (items + fills);
* with ``gbr_attach_vectors: True`` also ``gbr_fills`` float ``[B, W, D]`` (the unit vectors,
  zeros elsewhere).

``W = MAX_ITEM_LIST_LENGTH + gbr_fill_slots``. Tokens are left-aligned like RecBole's
``item_id_list`` (padding at the end). The original fields are left untouched.

Which fills a row gets. The row's history is the user's prefix ``x_0 .. x_{k-1}`` (RecBole keeps
its last ``item_length`` items ``x_{k-l} .. x_{k-1}``; ``k = l`` when ``l < MAX_ITEM_LIST_LENGTH``,
otherwise ``k`` is found by matching the window and the row's target ``x_k`` against the user's
full time-ordered sequence). A stored gap ``i`` (a fill between ``x_i`` and ``x_{i+1}``) is used
iff ``k - l <= i <= k - 2``: both neighbours are in the history. The gap right before the target
(``i = k - 1``) is never used: it is located with the target's own time/category. Gaps exist only
inside the training view, so valid/test histories get the fills of their training part and none
next to a held-out item. At most ``gbr_fill_slots`` fills are kept, the most recent ones; observed
items are never dropped, so a row without fills equals RecBole's history exactly.

``gbr_mode``:

* ``insert``: fills in time order at their gaps: ``x_{k-l} .. x_i [FILL_i] x_{i+1} .. x_{k-1}``;
* ``append``: the observed history unchanged, then its fills in time order:
  ``x_{k-l} .. x_{k-1} [FILL_i1] [FILL_i2] ..``.

NOTE: the batch carries indices into the stored table rather than a ``[B, W, D]`` float field by
default: the CTR track scores 1 + 99 candidates by repeating every row 100 times, which would copy
``[B, W, D]`` (4.7 GB for an eval batch of 1024 on Beauty, D = 384, W = 30).
NOTE: the user's FULL sequence (valid/test items included) is read to locate ``k``; it never
enters any output, which depends only on ``k``, ``l`` and the stored training-only vectors.
NOTE: if a user's window and target occur twice in its sequence (identical ``l`` items followed
by the same target), the earlier position is used (counted in ``ambiguous_windows``).
"""
from __future__ import annotations

import logging
from typing import Dict, Optional

import numpy as np
import torch
from recbole.data.interaction import Interaction

from recbole_reaseq.config import config_get, time_normalized

from .augment import load_augmentation

__all__ = ["GBRAugment", "MODES", "FIELDS"]

logger = logging.getLogger(__name__)

MODES = ("insert", "append")
FIELDS = ("gbr_items", "gbr_fill_index", "gbr_is_fill", "gbr_length")
DEFAULT_FILL_SLOTS = 10


class _User:
    __slots__ = ("full", "m", "gaps", "row0", "windows")

    def __init__(self, full, m, gaps, row0):
        self.full = full            # [n] RecBole item ids, whole time-ordered sequence
        self.m = m                  # length of the training view
        self.gaps = gaps            # [g] sorted gap positions
        self.row0 = row0            # row of its first fill in the stored table
        self.windows: Optional[Dict[bytes, int]] = None


class GBRAugment:
    """Adds GBR's filled behaviours (insert or append layout) to every batch; see the module."""

    incompatible_models = ()

    def __init__(self, config, augmentation=None):
        """``augmentation`` (an :class:`~recbole_reaseq.gbr.augment.Augmentation`) overrides the
        stored one named by the config (tests, notebooks)."""
        self.mode = config_get(config, "gbr_mode", "insert")
        if self.mode not in MODES:
            raise ValueError(f"config gbr_mode={self.mode!r} is unknown. Fix: gbr_mode: insert "
                             f"(fills in time order) or append (after the observed history).")
        self.slots = config_get(config, "gbr_fill_slots", DEFAULT_FILL_SLOTS)
        if not isinstance(self.slots, int) or self.slots < 0:
            raise ValueError(f"config gbr_fill_slots={self.slots!r} must be an integer >= 0 "
                             f"(extra tokens for fills). Fix: e.g. gbr_fill_slots: 10.")
        self.max_len = int(config["MAX_ITEM_LIST_LENGTH"])
        self.width = self.max_len + self.slots
        self.uid_field = config["USER_ID_FIELD"]
        self.iid_field = config["ITEM_ID_FIELD"]
        self.list_field = self.iid_field + config["LIST_SUFFIX"]
        self.len_field = config["ITEM_LIST_LENGTH_FIELD"]
        self.attach = bool(config_get(config, "gbr_attach_vectors", False))
        self.dataset_name = config["dataset"]
        self.normalize_time = time_normalized(config)      # RecBole's order of tied timestamps
        self.data_path = config_get(config, "data_path")
        self._data = None                   # the sequences, read once here or in _build
        if augmentation is None:
            self._data = self._sequences()
            augmentation = load_augmentation(config, data=self._data)
        self.aug = augmentation
        self.table = torch.from_numpy(np.concatenate(
            [np.zeros((1, self.aug.dim), np.float32), self.aug.fills]))   # [G+1, D], row 0 = 0
        self.users: Optional[Dict[int, _User]] = None
        self.ambiguous_windows = 0
        self.rows_seen = 0
        self.fills_used = 0

    # ------------------------------------------------------------------------------  index
    def _sequences(self):
        from .locate import load_sequences

        return load_sequences(self.dataset_name, self.data_path,
                              normalize_time=self.normalize_time)

    def _build(self, dataset) -> None:
        data = self._data if self._data is not None else self._sequences()
        self._data = None
        tok2id = dataset.field2token_id
        item_map, user_map = tok2id[self.iid_field], tok2id[self.uid_field]
        aug = self.aug
        stored = {str(u): r for r, u in enumerate(aug.users)}
        users: Dict[int, _User] = {}
        for u in range(len(data)):
            token = str(data.users[u])
            uid = user_map.get(token)
            if uid is None:                      # filtered out by RecBole
                continue
            full_tokens = data.item_tokens[data.sequence(u)]
            try:
                full = np.array([item_map[str(t)] for t in full_tokens], dtype=np.int64)
            except KeyError as err:
                raise ValueError(f"item {err.args[0]} of user {token} is unknown to RecBole's "
                                 f"data set (filtered?); GBR augmentation needs the unfiltered "
                                 f"sequences. Fix: drop the item/user filters or rebuild.") from None
            r = stored.get(token)
            if r is None:
                users[int(uid)] = _User(full, 0, np.zeros(0, np.int64), 0)
                continue
            lo, hi = int(aug.item_offsets[r]), int(aug.item_offsets[r + 1])
            if [str(t) for t in full_tokens[:hi - lo]] != [str(t) for t in aug.items[lo:hi]]:
                raise ValueError(f"GBR augmentation {aug.path}: user {token}'s stored training "
                                 f"sequence differs from the data. Fix: rebuild it (python -m "
                                 f"recbole_reaseq.gbr all --dataset {self.dataset_name} ...).")
            g0, g1 = int(aug.gap_offsets[r]), int(aug.gap_offsets[r + 1])
            users[int(uid)] = _User(full, hi - lo, aug.gap_pos[g0:g1].astype(np.int64), g0)
        self.users = users

    def _prefix_end(self, user: _User, window: np.ndarray, target: int) -> int:
        """``k`` of a full-length window ``x_{k-l} .. x_{k-1}`` followed by ``target``."""
        if user.windows is None:
            L = self.max_len
            user.windows = {}
            for k in range(L, len(user.full)):
                key = user.full[k - L:k + 1].tobytes()
                if key in user.windows:
                    self.ambiguous_windows += 1
                else:
                    user.windows[key] = k
        key = np.append(window, target).astype(np.int64).tobytes()
        k = user.windows.get(key)
        if k is None:
            raise ValueError("a batch history (user window + target) was not found in the "
                             "user's sequence: the GBR augmentation does not match this data set. "
                             "Fix: rebuild it (python -m recbole_reaseq.gbr all ...).")
        return k

    # ---------------------------------------------------------------------------  transform
    def __call__(self, dataset, interaction):
        if self.list_field not in interaction.interaction:
            return interaction
        if self.users is None:
            self._build(dataset)
        uids = interaction[self.uid_field].numpy()                     # [B]
        seqs = interaction[self.list_field]                            # [B, L]
        lens = interaction[self.len_field].numpy()                     # [B]
        targets = interaction[self.iid_field].numpy() if self.iid_field in interaction.interaction \
            else None
        B, W = len(uids), self.width
        items = torch.zeros(B, W, dtype=torch.long)                    # [B, W]
        fidx = torch.zeros(B, W, dtype=torch.long)                     # [B, W]
        total = torch.zeros(B, dtype=torch.long)                       # [B]
        seq_np = seqs.numpy()
        for b in range(B):
            l = int(lens[b])
            hist = seq_np[b, :l]
            user = self.users.get(int(uids[b]))
            fills = np.zeros(0, dtype=np.int64)
            if user is not None and len(user.gaps) and l >= 2:
                if l < self.max_len:
                    k = l
                else:
                    if targets is None:
                        raise KeyError(f"gbr_augment needs the target field '{self.iid_field}' "
                                       f"to place full-length histories in the user's sequence")
                    k = self._prefix_end(user, hist, int(targets[b]))
                a = np.searchsorted(user.gaps, k - l, side="left")
                z = np.searchsorted(user.gaps, k - 2, side="right")
                a = max(a, z - self.slots)                             # the most recent fills
                fills = np.arange(a, z)                                # indices into user.gaps
            n_f = len(fills)
            self.fills_used += n_f
            rows = (user.row0 + fills + 1) if n_f else fills           # table rows (+1)
            if self.mode == "append" or n_f == 0:
                items[b, :l] = torch.from_numpy(hist)
                if n_f:
                    fidx[b, l:l + n_f] = torch.from_numpy(rows)
            else:
                # insert: fill j goes right after item position gaps[j] (absolute) = local
                # gaps[j] - (k - l); its token index = local + 1 + (number of earlier fills)
                local = user.gaps[fills] - (k - l)                     # [f] item index in hist
                fill_tok = local + 1 + np.arange(n_f)                  # [f]
                item_tok = np.arange(l) + np.searchsorted(local, np.arange(l), side="left")
                items[b, torch.from_numpy(item_tok)] = torch.from_numpy(hist)
                fidx[b, torch.from_numpy(fill_tok)] = torch.from_numpy(rows)
            total[b] = l + n_f
        self.rows_seen += B
        fields = {"gbr_items": items, "gbr_fill_index": fidx, "gbr_is_fill": fidx > 0,
                  "gbr_length": total}
        if self.attach:
            fields["gbr_fills"] = self.table[fidx]                     # [B, W, D]
        interaction.update(Interaction(fields))
        return interaction

r"""
ReaRec
################################################
Reference:
    Jiakai Tang et al. "Think Before Recommend: Unleashing the Latent Reasoning Power for
    Sequential Recommendation." arXiv 2503.22675 (ReaRec, ERL and PRL).

Reference:
    https://github.com/TangJiakai/ReaRec (official code, read for the loss details noted below)

RecBole's SASRec, unchanged, encodes the item sequence; its last hidden state ``h_0`` is then fed
back autoregressively for ``reasoning_steps`` (R) implicit reasoning steps: the input of step
``k`` (1..R) is ``LayerNorm(h_{k-1} + r_k)`` (dropout in training), with ``r_k`` a reasoning
position embedding that only reasoning tokens get, and ``h_k`` is the encoder's output at that
token, which attends to the valid items and to the reasoning tokens before it (causal). Two
learning methods (config ``rearec_mode``):

* ``ERL`` (Ensemble Reasoning Learning): every step's output ``h_0 .. h_R`` is supervised with
  SASRec's CE over all items (mean over the R + 1 steps), minus ``erl_kl_weight`` times the mean
  pairwise KL divergence between the steps' item distributions (a diversity regulariser: steps
  should look at the user from different angles). Inference scores with the mean of the step
  outputs (= the mean of the steps' scores).
* ``PRL`` (Progressive Reasoning Learning): step ``k``'s CE uses the temperature
  ``tau_k = rearec_temperature * prl_temp_scale ** (R - k)`` (progressive sharpening, the last
  step gets ``tau``); the last step's CE plus ``prl_pl_weight`` times the mean CE of the earlier
  steps. Noise-robust contrastive reasoning: a second, noisy reasoning chain (Gaussian noise of
  std ``prl_noise_factor`` added to every reasoning input) is contrasted with the clean chain at
  every reasoning step (in-batch InfoNCE, temperature ``tau``, weight ``prl_cl_weight``).
  Inference scores with the last step.

``reasoning_steps: 0`` is exactly SASRec (same parameters, same forward, same loss; tested against
RecBole's SASRec built with the same seed).

NOTE: reasoning uses a key/value cache. The items are encoded once by SASRec's own ``forward``
(RecBole's ``TransformerEncoder``); forward hooks capture every layer's projected keys and
values, and each reasoning token then runs the same layers' weights on one query position
(:func:`attend_one`, :func:`reasoning_step`). This equals re-encoding the sequence with the
reasoning tokens appended (tested), as in the official code, at the cost of one token per step.
In training, the reasoning tokens thus see the items' keys/values of the one encoding pass
(one dropout mask), again as with the official cache.
NOTE: the reasoning input reuses SASRec's input ``LayerNorm`` and ``dropout`` (the official code
normalises every new input token with the encoder's input normalisation).
NOTE: ERL supervises each step with CE and averages (the paper's per-step objective); the
official code instead applies CE to the mean of the step outputs, with logits divided by 0.07.
Here ERL has no temperature (SASRec's CE), so ERL with R = 0 is SASRec's loss exactly. The KL
term follows the official code: ``KL(p_j || sg(p_i))`` over ordered pairs ``i != j``, averaged.
CE and KL are computed together by :class:`ErlLoss` with a closed-form gradient (the same loss
and gradient as autograd, tested; fewer passes over the ``[B, R+1, n_items]`` logits).
NOTE: PRL's temperatures only enter the loss; ``predict`` / ``full_sort_predict`` return the raw
dot products (the ranking is the same; the CTR track's LogLoss of sigmoid(score) is uncalibrated
for every softmax-trained model anyway).
NOTE: the official PRL adds the noise only after a warm-up of 2 epochs; RecBole's
``calculate_loss`` does not know the epoch, so here the noisy chain is used from the first step.
The noisy chain shares the clean chain's item encoding (the official code duplicates the batch,
so its two views also differ in the items' dropout). The contrastive loss compares the outputs
of reasoning steps 1..R by cosine similarity over ``tau``; the official code uses the raw dot
product over ``tau``, which on LayerNorm-ed states (norm ~ sqrt(H)) gives logits in the hundreds:
on the tiny test data that term then dominated the loss (train loss 25x the CE) and the ranking
quality fell far below SASRec's, so it is normalised here.
NOTE: ``loss_type`` must be ``CE`` (the reasoning losses are softmax losses over all items).
NOTE: ``knowledge_features: True`` (default ``False``) adds ReaSeq's frozen knowledge embedding
(config ``knowledge_field``, default ``knowledge_emb``; :func:`recbole_reaseq.model.item_repr.
load_item_representations`) to every item as a feature, as KnowledgeDIN does for DIN:
``e(i) = E_id[i] + W k(i)``, with ``W`` a trainable ``Linear(D, hidden_size, bias=False)``
initialised to zero (KnowledgeDIN's choice), so an untrained model equals the ID-only one built
with the same seed (tested; the projection is created without drawing random numbers) and the
gradient of ``W`` is non-zero from the first step (``dL/dW = sum_i dL/de(i) k(i)^T``). Row 0
(padding) and items without an artefact row have ``k = 0``. ``item_embedding`` becomes a
:class:`recbole_reaseq.model.layers.KnowledgeItemEmbedding`: the ID table moves to
``item_embedding.id_embedding``, the knowledge matrix is its persistent buffer
``item_embedding.knowledge_emb`` (a checkpoint reproduces its predictions), and its ``weight``
is the combined table, so the input tokens, the training logits, ``predict`` and
``full_sort_predict`` all use that one table. Off, nothing is loaded or added (same parameters,
no buffer; tested).
NOTE: unlike KnowledgeDIN (which adds the stored vectors as they are), ``k(i)`` is the centred
unit row of :func:`recbole_reaseq.model.item_repr.center_rows` (unit rows minus the catalogue's
mean unit row, re-normalised to unit length); ``center_repr: False`` keeps only the L2
normalisation. Reason: a catalogue's knowledge vectors share one large direction ``m`` (cosine
with the mean direction 0.73 on Beauty, 0.95 on the tiny test data). Adam moves every entry of
``W`` by about the learning rate however small its gradient, so ``W m`` grows by up to
``lr * ||m||_1 ~ lr * sqrt(D)`` per step; added to every input item, it swamps the ID and
position embeddings under SASRec's input LayerNorm (on the tiny data, ReaRec-ERL's train loss
then fell 2% in 8 epochs instead of 27% for the ID-only model; centred, 18%).
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from recbole_reaseq import compat
from recbole_reaseq.model.item_repr import load_item_representations
from recbole_reaseq.model.layers import KnowledgeItemEmbedding

# importing RecBole's sequential package runs sine.py, which switches autograd anomaly mode on
SASRec = compat.import_recbole_module("recbole.model.sequential_recommender.sasrec").SASRec

MODES = ("ERL", "PRL")
_MASKED = -10000.0  # RecBole's additive attention mask value (get_attention_mask)


# ---------------------------------------------------------------------------------------------
# Reusable blocks: a key/value cache over RecBole's TransformerEncoder (shared with PLR).
# ---------------------------------------------------------------------------------------------
class ReasoningCache:
    """Per-layer projected keys/values of the encoded items plus the reasoning tokens so far.

    ``keys[l]`` / ``values[l]``: ``[N, T, H]`` (before the head split); ``mask``: ``[N, T]``
    additive (0 = visible, -10000 = padding item), for the ``N`` rows being reasoned.
    """

    def __init__(self, keys: list, values: list, mask: torch.Tensor):
        self.keys, self.values, self.mask = keys, values, mask

    def repeat_interleave(self, repeats: int) -> "ReasoningCache":
        """Each row ``repeats`` times in a row (``[N, ...]`` -> ``[N * repeats, ...]``)."""
        def rep(t):
            return t.repeat_interleave(repeats, dim=0)
        return ReasoningCache([rep(k) for k in self.keys], [rep(v) for v in self.values],
                              rep(self.mask))

    def cat(self, other: "ReasoningCache") -> "ReasoningCache":
        """Rows of ``self`` then rows of ``other`` (same number of positions)."""
        return ReasoningCache([torch.cat(p, 0) for p in zip(self.keys, other.keys)],
                              [torch.cat(p, 0) for p in zip(self.values, other.values)],
                              torch.cat([self.mask, other.mask], 0))


@contextlib.contextmanager
def capture_keys_values(trm_encoder):
    """Collect every layer's projected keys and values while ``trm_encoder`` runs once.

    Yields two lists filled in layer order: ``keys[l]``, ``values[l]`` of shape ``[B, L, H]``.
    """
    keys, values, handles = [], [], []
    for layer in trm_encoder.layer:
        attention = layer.multi_head_attention
        handles.append(attention.key.register_forward_hook(
            lambda _m, _i, out: keys.append(out)))
        handles.append(attention.value.register_forward_hook(
            lambda _m, _i, out: values.append(out)))
    try:
        yield keys, values
    finally:
        for handle in handles:
            handle.remove()


def encode_items(model, item_seq, item_seq_len):
    """SASRec's own ``forward`` on ``model`` (``h_0`` ``[B, H]``) and the items' key/value cache.

    The cache's mask hides padding items (id 0) exactly as RecBole's ``get_attention_mask``.
    """
    with capture_keys_values(model.trm_encoder) as (keys, values):
        h0 = SASRec.forward(model, item_seq, item_seq_len)                     # [B, H]
    mask = torch.where(item_seq != 0, 0.0, _MASKED).to(h0.dtype)               # [B, L]
    return h0, ReasoningCache(keys, values, mask)


def attend_one(attention, x: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
               mask: torch.Tensor) -> torch.Tensor:
    """RecBole ``MultiHeadAttention`` for one query position over cached keys/values.

    x: ``[N, H]`` (the layer input at the new token); keys/values: ``[N, T, H]`` projected,
    including the new token's; mask: ``[N, T]`` additive. Returns ``[N, H]``: the same
    computation as ``attention(seq, mask)`` at that position (same modules, same order).
    """
    n = x.shape[0]
    query = attention.transpose_for_scores(attention.query(x).unsqueeze(1))     # [N, 1, h, d]
    query = query.permute(0, 2, 1, 3)                                          # [N, h, 1, d]
    key = attention.transpose_for_scores(keys).permute(0, 2, 3, 1)             # [N, h, d, T]
    value = attention.transpose_for_scores(values).permute(0, 2, 1, 3)         # [N, h, T, d]
    scores = torch.matmul(query, key) / attention.sqrt_attention_head_size     # [N, h, 1, T]
    scores = scores + mask[:, None, None, :]
    probs = attention.attn_dropout(attention.softmax(scores))
    context = torch.matmul(probs, value).permute(0, 2, 1, 3).reshape(n, attention.all_head_size)
    hidden = attention.out_dropout(attention.dense(context))                   # [N, H]
    return attention.LayerNorm(hidden + x)


def reasoning_step(trm_encoder, cache: ReasoningCache, x: torch.Tensor) -> torch.Tensor:
    """Run one reasoning token ``x`` ``[N, H]`` through every layer; appends it to ``cache``.

    Returns the last layer's output at the token, ``[N, H]``.
    """
    cache.mask = F.pad(cache.mask, (0, 1), value=0.0)                          # [N, T+1]
    for index, layer in enumerate(trm_encoder.layer):
        attention = layer.multi_head_attention
        cache.keys[index] = torch.cat([cache.keys[index], attention.key(x).unsqueeze(1)], 1)
        cache.values[index] = torch.cat([cache.values[index],
                                         attention.value(x).unsqueeze(1)], 1)
        x = attend_one(attention, x, cache.keys[index], cache.values[index], cache.mask)
        x = layer.feed_forward(x)                                              # [N, H]
    return x


def pairwise_kl_diversity(log_probs: torch.Tensor) -> torch.Tensor:
    """Mean ``KL(p_j || sg(p_i))`` over ordered step pairs ``i != j`` (the definition, with
    autograd; training uses :class:`ErlLoss`, which fuses it with the CE).

    log_probs: ``[B, K, N]``, the steps' item log-distributions (``log_softmax`` of the logits).
    """
    steps = log_probs.shape[1]
    log_q = log_probs.detach()                                                 # [B, K, N]
    p = log_probs.exp()
    neg_entropy = (p * log_probs).sum(-1)                                      # [B, K]
    cross = torch.matmul(p, log_q.transpose(1, 2))                             # [B, K(j), K(i)]
    kl = neg_entropy.unsqueeze(-1) - cross                                     # [B, K, K]
    off_diagonal = ~torch.eye(steps, dtype=torch.bool, device=log_probs.device)
    return kl[:, off_diagonal].mean()


class ErlLoss(torch.autograd.Function):
    r"""ERL's loss on step logits ``[B, K, N]`` (K >= 2): the mean CE of the K steps minus
    ``kl_weight`` times :func:`pairwise_kl_diversity`, with its gradient in closed form.

    With ``lp_j = log_softmax(z_j)``, ``p_j = exp(lp_j)`` and ``S = sum_i lp_i`` (stop-gradient),
    the summed KL is ``sum_j <p_j, c_j>`` with ``c_j = K lp_j - S``, and its gradient with respect
    to the logits is ``p_j * (c_j - <p_j, c_j>)`` (the ``sg(p_i)`` terms contribute no
    gradient). So ``dL/dz_j = [p_j - onehot(y)] / (BK) - w p_j (c_j - <p_j, c_j>) / (BK(K-1))``.
    Autograd through :func:`pairwise_kl_diversity` makes about three times as many passes over
    the ``[B, K, N]`` tensors: a training step on Beauty's shape took 1.3x as long with it
    (``benchmarks/results/latent_train_cost.md``; tested equal in value and gradient).
    """

    @staticmethod
    def forward(ctx, logits, target, kl_weight):
        batch, steps, _ = logits.shape
        log_probs = F.log_softmax(logits, dim=-1)                              # [B, K, N]
        probs = log_probs.exp()
        index = target.view(batch, 1, 1).expand(batch, steps, 1)              # [B, K, 1]
        ce = -log_probs.gather(-1, index).sum() / (batch * steps)
        centred = log_probs.mul(steps).sub_(log_probs.sum(1, keepdim=True))    # c: [B, K, N]
        expected = (probs * centred).sum(-1, keepdim=True)                     # <p, c>: [B, K, 1]
        kl = expected.sum() / (batch * steps * (steps - 1))
        ctx.save_for_backward(probs, centred, expected, index)
        ctx.kl_weight = kl_weight
        return ce - kl_weight * kl

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        probs, centred, expected, index = ctx.saved_tensors
        batch, steps, _ = probs.shape
        w = ctx.kl_weight / (batch * steps * (steps - 1))
        grad_logits = (centred - expected).mul_(-w).add_(1.0 / (batch * steps)).mul_(probs)
        grad_logits.scatter_add_(-1, index, torch.full(index.shape, -1.0 / (batch * steps),
                                                       dtype=probs.dtype, device=probs.device))
        return grad_logits.mul_(grad), None, None


def in_batch_info_nce(anchor: torch.Tensor, positive: torch.Tensor,
                      temperature: float) -> torch.Tensor:
    """InfoNCE with in-batch negatives per step; anchor/positive ``[B, K, H]``, cosine / tau."""
    anchor, positive = F.normalize(anchor, dim=-1), F.normalize(positive, dim=-1)
    similarity = torch.einsum("bkh,ckh->kbc", anchor, positive) / temperature  # [K, B, B]
    labels = torch.arange(anchor.shape[0], device=anchor.device)
    labels = labels.unsqueeze(0).expand(similarity.shape[0], -1)               # [K, B]
    return F.cross_entropy(similarity.transpose(1, 2), labels)


class ReaRec(SASRec):
    r"""SASRec + implicit multi-step reasoning (ERL or PRL); see the module docstring."""

    def __init__(self, config, dataset):
        require_ce_loss(config, type(self).__name__)
        super().__init__(config, dataset)

        # load parameters
        self.rearec_mode = str(config["rearec_mode"] or "").upper()
        if self.rearec_mode not in MODES:
            raise ValueError(f"unknown rearec_mode {config['rearec_mode']!r}: set rearec_mode "
                             f"to one of {', '.join(MODES)}.")
        self.reasoning_steps = non_negative_int(config, "reasoning_steps")
        self.erl_kl_weight = float(config["erl_kl_weight"] or 0.0)
        self.temperature = float(config["rearec_temperature"])
        self.prl_temp_scale = float(config["prl_temp_scale"])
        self.prl_pl_weight = float(config["prl_pl_weight"] or 0.0)
        self.prl_noise_factor = float(config["prl_noise_factor"] or 0.0)
        self.prl_cl_weight = float(config["prl_cl_weight"] or 0.0)
        if self.temperature <= 0 or self.prl_temp_scale <= 0:
            raise ValueError("rearec_temperature and prl_temp_scale must be > 0 (got "
                             f"{self.temperature}, {self.prl_temp_scale}).")

        # define layers (none at R = 0: then the parameters are exactly SASRec's)
        self.reason_pos_emb = (nn.Embedding(self.reasoning_steps, self.hidden_size)
                               if self.reasoning_steps > 0 else None)

        # parameters initialization (SASRec's init ran in super().__init__; same rule here)
        if self.reason_pos_emb is not None:
            self.reason_pos_emb.apply(self._init_weights)

        # knowledge as an item feature (config knowledge_features; off: nothing added)
        self.knowledge_features = add_knowledge_features(self, config, dataset)

    # -- encoding and reasoning ---------------------------------------------------------------
    def reasoning_input(self, hidden, step, noise=0.0):
        """``dropout(LayerNorm(h_{k-1} + r_k [+ noise]))``; step is 0-based; ``[N, H]``."""
        x = hidden + self.reason_pos_emb.weight[step]
        if noise > 0:
            x = x + torch.randn_like(x) * noise
        return self.dropout(self.LayerNorm(x))

    def reason(self, item_seq, item_seq_len, noise=0.0):
        """Step outputs ``[B, R+1, H]`` (``h_0`` first); with ``noise`` > 0 also the noisy
        chain's reasoning outputs ``[B, R, H]`` (steps 1..R), else ``None``."""
        h0, cache = encode_items(self, item_seq, item_seq_len)
        batch = h0.shape[0]
        if noise > 0:                                                          # clean | noisy
            cache = cache.cat(ReasoningCache(list(cache.keys), list(cache.values), cache.mask))
            hidden = torch.cat([h0, h0], 0)                                    # [2B, H]
        else:
            hidden = h0
        outputs = [hidden]
        for step in range(self.reasoning_steps):
            x = self.reasoning_input(hidden, step)
            if noise > 0:
                x = torch.cat([x[:batch], self.reasoning_input(hidden[batch:], step, noise)])
            hidden = reasoning_step(self.trm_encoder, cache, x)                # [B or 2B, H]
            outputs.append(hidden)
        steps = torch.stack(outputs, 1)                                        # [B', R+1, H]
        if noise > 0:
            return steps[:batch], steps[batch:, 1:]
        return steps, None

    def forward(self, item_seq, item_seq_len):
        if self.reasoning_steps == 0:
            return super().forward(item_seq, item_seq_len)                     # [B, H]
        steps, _ = self.reason(item_seq, item_seq_len)                         # [B, R+1, H]
        if self.rearec_mode == "ERL":
            return steps.mean(1)                                               # [B, H]
        return steps[:, -1]                                                    # [B, H]

    # -- training -----------------------------------------------------------------------------
    def step_temperatures(self, device):
        """PRL: ``tau * scale ** (R - k)`` for k = 0..R, ``[R+1]``."""
        exponents = torch.arange(self.reasoning_steps, -1, -1, device=device,
                                 dtype=torch.float32)
        return self.temperature * self.prl_temp_scale ** exponents

    def calculate_loss(self, interaction):
        if self.reasoning_steps == 0:
            return super().calculate_loss(interaction)                         # SASRec's CE
        item_seq = interaction[self.ITEM_SEQ]
        item_seq_len = interaction[self.ITEM_SEQ_LEN]
        pos_items = interaction[self.POS_ITEM_ID]                              # [B]
        use_noise = (self.rearec_mode == "PRL" and self.prl_cl_weight > 0
                     and self.prl_noise_factor > 0)
        steps, noisy = self.reason(item_seq, item_seq_len,
                                   noise=self.prl_noise_factor if use_noise else 0.0)
        logits = torch.matmul(steps, self.item_embedding.weight.t())           # [B, R+1, N]
        n_steps = logits.shape[1]
        if self.rearec_mode == "ERL":
            if self.erl_kl_weight == 0:                                        # mean CE of steps
                return self.loss_fct(logits.reshape(-1, logits.shape[-1]),
                                     pos_items.repeat_interleave(n_steps))
            return ErlLoss.apply(logits, pos_items, self.erl_kl_weight)
        scaled = logits / self.step_temperatures(logits.device).view(1, -1, 1)  # [B, R+1, N]
        if self.prl_pl_weight > 0:
            # every step's CE in one call (one log_softmax over the contiguous [B, R+1, N]):
            # the last step's mean CE + weight * the earlier steps' mean CE
            per_step = F.cross_entropy(scaled.reshape(-1, logits.shape[-1]),
                                       pos_items.repeat_interleave(n_steps),
                                       reduction="none").view(-1, n_steps)     # [B, R+1]
            loss = per_step[:, -1].mean() + self.prl_pl_weight * per_step[:, :-1].mean()
        else:
            loss = self.loss_fct(scaled[:, -1], pos_items)
        if noisy is not None:
            loss = loss + self.prl_cl_weight * in_batch_info_nce(noisy, steps[:, 1:],
                                                                 self.temperature)
        return loss


def require_ce_loss(config, model_name: str) -> None:
    if config["loss_type"] != "CE":
        raise ValueError(f"{model_name} trains with softmax losses over all items: set "
                         f"loss_type: CE (got loss_type: {config['loss_type']!r}).")


def non_negative_int(config, key: str) -> int:
    value = config[key]
    if value is None or isinstance(value, bool) or int(value) != value or int(value) < 0:
        raise ValueError(f"{key} must be a non-negative integer (got {value!r}); set e.g. "
                         f"{key}: 2 (0 = the SASRec backbone alone).")
    return int(value)


def add_knowledge_features(model, config, dataset) -> bool:
    """Config ``knowledge_features``: if ``True``, ``model.item_embedding`` (an initialised
    ``nn.Embedding``) becomes :class:`~recbole_reaseq.model.layers.KnowledgeItemEmbedding` over
    the frozen ``knowledge_field`` table of ``dataset``'s items (centred first unless
    ``center_repr: False``); returns whether it did. ``False`` / unset: nothing is loaded
    or added."""
    if not bool_flag(config, "knowledge_features", False):
        return False
    field = config["knowledge_field"] or "knowledge_emb"
    reprs = load_item_representations(config, dataset, knowledge=True, sid=False,
                                      knowledge_field=field,
                                      center=bool_flag(config, "center_repr", True))
    model.item_embedding = KnowledgeItemEmbedding(model.item_embedding, reprs.knowledge_emb)
    return True


def bool_flag(config, key: str, default: bool) -> bool:
    value = config[key]
    if value is None:
        return default
    if not isinstance(value, bool):
        raise ValueError(f"{key} must be True or False (got {value!r}).")
    return value

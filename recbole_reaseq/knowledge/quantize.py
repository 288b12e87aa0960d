"""RQ-VAE: residual quantisation of item knowledge embeddings into hierarchical semantic codes.

Reference: ReaSeq (TaoRank Team, arXiv 2512.21257), Section 2.1.2 and Appendix C: the
reasoning-enhanced item embeddings are compressed into discrete semantic IDs with an RQ-VAE.
RQ-VAE: Zeghidour et al. 2021 (SoundStream, residual vector quantisation) as used for
recommendation by TIGER (Rajput et al. 2023, "Recommender Systems with Generative Retrieval").

Model (``x [B, D] -> z [B, d] -> codes [B, L] -> z_q [B, d] -> x_hat [B, D]``)::

    z      = encoder(x)                   # linear adapter or small MLP
    r_0    = z
    c_l    = argmin_k ||r_l - C_l[k]||^2   # level l = 0..L-1, codebook C_l [K, d]
    e_l    = C_l[c_l];  r_{l+1} = r_l - e_l
    z_q    = sum_l e_l
    x_hat  = decoder(z + sg(z_q - z))     # straight-through estimator
    loss   = MSE(x_hat, x) + sum_l [ MSE(e_l, sg(r_l)) + beta * MSE(r_l, sg(e_l)) ]

* Codebooks are initialised by k-means (k-means++ seeding + Lloyd, torch, seeded generator) on the
  residuals of the first training batch, level by level (TIGER).
* Dead codes: a code not selected for ``dead_code_steps`` consecutive training steps is re-seeded
  to a random residual of the current batch at that level.
* :func:`code_report` / :meth:`RQVAE.report`: per-level utilisation and entropy, collision rate,
  max collision-group size, reconstruction error. :func:`disambiguate` appends a level that makes
  every full code unique (TIGER's collision handling).

NOTE: the paper does not give RQ-VAE hyper-parameters; the defaults (L=3, K=256, beta=0.25,
latent 32) follow TIGER.
NOTE: the codebook / commitment losses are summed over levels and averaged over batch and latent
dimensions (``F.mse_loss``), TIGER sums squared norms; only the loss scale differs.
NOTE: re-seeded codes keep their optimiser (Adam) moments; the codebook loss re-anchors them.

This module does not import recbole.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "RQVAEConfig",
    "MLP",
    "VectorQuantizer",
    "ResidualQuantizer",
    "RQVAE",
    "kmeans",
    "code_report",
    "reconstruction_error",
    "collision_groups",
    "disambiguate",
]


# ----------------------------------------------------------------------------- config


@dataclass
class RQVAEConfig:
    """Hyper-parameters of :class:`RQVAE`.

    ``hidden_dims=()`` gives a linear adapter ``D -> d``; e.g. ``(256, 128)`` gives the MLP
    ``D -> 256 -> 128 -> d`` (ReLU between layers), the decoder mirrors it.
    ``dead_code_steps=0`` disables dead-code re-seeding.
    """

    in_dim: int = 384
    latent_dim: int = 32
    hidden_dims: tuple[int, ...] = field(default_factory=tuple)
    n_levels: int = 3
    codebook_size: int = 256
    beta: float = 0.25
    dead_code_steps: int = 200
    kmeans_iters: int = 25

    def __post_init__(self) -> None:
        self.hidden_dims = tuple(int(h) for h in self.hidden_dims)
        for name in ("in_dim", "latent_dim", "n_levels", "codebook_size", "kmeans_iters"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"RQVAEConfig({name}={getattr(self, name)}) must be >= 1.")
        if any(h < 1 for h in self.hidden_dims):
            raise ValueError(f"RQVAEConfig(hidden_dims={self.hidden_dims}) must be positive.")
        if self.beta < 0:
            raise ValueError(f"RQVAEConfig(beta={self.beta}) must be >= 0.")
        if self.dead_code_steps < 0:
            raise ValueError(f"RQVAEConfig(dead_code_steps={self.dead_code_steps}) must be >= 0 "
                             "(0 disables re-seeding).")


# ----------------------------------------------------------------------------- k-means


def _sq_dist(x: Tensor, c: Tensor) -> Tensor:
    """Squared Euclidean distances ``[N, d] x [K, d] -> [N, K]``."""
    d = x.pow(2).sum(1, keepdim=True) - 2.0 * x @ c.t() + c.pow(2).sum(1)[None, :]  # [N, K]
    return d.clamp_min_(0.0)


def kmeans(x: Tensor, k: int, iters: int = 25, generator: torch.Generator | None = None) -> Tensor:
    """k-means++ seeding followed by ``iters`` Lloyd steps; returns centroids ``[k, d]``.

    Deterministic for a given ``generator``. With ``N <= k`` points every point becomes a centroid
    and the remaining ``k - N`` centroids are copies of random points (they start dead and are
    re-seeded by the dead-code rule during training).
    """
    x = x.detach().float()  # [N, d]
    n = x.shape[0]
    if n == 0:
        raise ValueError("kmeans(x=...) got no points.")
    if n <= k:
        extra = torch.randint(n, (k - n,), generator=generator)
        return torch.cat([x, x[extra]], 0).clone()  # [k, d]
    first = int(torch.randint(n, (1,), generator=generator))
    centroids = [x[first]]
    d2 = (x - x[first]).pow(2).sum(1)  # [N]
    for _ in range(1, k):
        total = float(d2.sum())
        if total <= 0.0:  # fewer distinct points than k
            idx = int(torch.randint(n, (1,), generator=generator))
        else:
            idx = int(torch.multinomial(d2 / total, 1, generator=generator))
        centroids.append(x[idx])
        d2 = torch.minimum(d2, (x - x[idx]).pow(2).sum(1))
    c = torch.stack(centroids)  # [k, d]
    for _ in range(iters):
        assign = _sq_dist(x, c).argmin(1)  # [N]
        sums = torch.zeros_like(c).index_add_(0, assign, x)  # [k, d]
        counts = torch.bincount(assign, minlength=k).to(x.dtype)  # [k]
        nonempty = counts > 0
        new_c = c.clone()
        new_c[nonempty] = sums[nonempty] / counts[nonempty, None]
        if torch.equal(new_c, c):
            break
        c = new_c
    return c


# ----------------------------------------------------------------------------- modules


class MLP(nn.Module):
    """Linear layers ``dims[0] -> ... -> dims[-1]`` with ReLU between (none after the last)."""

    def __init__(self, dims: Sequence[int]):
        super().__init__()
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
            layers.append(nn.Linear(a, b))
            if i < len(dims) - 2:
                layers.append(nn.ReLU())
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:  # [B, dims[0]] -> [B, dims[-1]]
        return self.net(x)


class VectorQuantizer(nn.Module):
    """One residual level: a codebook ``[K, d]`` with usage tracking for dead-code re-seeding."""

    def __init__(self, codebook_size: int, dim: int, dead_code_steps: int = 0):
        super().__init__()
        self.codebook = nn.Parameter(torch.randn(codebook_size, dim) * 0.01)  # [K, d]
        self.dead_code_steps = dead_code_steps
        self.register_buffer("unused_steps", torch.zeros(codebook_size, dtype=torch.long))  # [K]
        self.register_buffer("initialised", torch.tensor(False))
        self.last_reseeded = 0

    @torch.no_grad()
    def assign(self, r: Tensor) -> Tensor:
        """Nearest code of each residual ``[B, d] -> [B]`` (ties -> lowest index)."""
        return _sq_dist(r.detach(), self.codebook.detach()).argmin(1)

    @torch.no_grad()
    def reseed_dead(self, r: Tensor, generator: torch.Generator | None = None) -> int:
        """Re-seed codes unused for ``dead_code_steps`` steps to random rows of ``r [B, d]``."""
        if self.dead_code_steps <= 0 or r.shape[0] == 0:
            return 0
        dead = torch.nonzero(self.unused_steps >= self.dead_code_steps).flatten()  # [n_dead]
        n_dead = dead.numel()
        if n_dead == 0:
            return 0
        if n_dead <= r.shape[0]:
            rows = torch.randperm(r.shape[0], generator=generator)[:n_dead]
        else:
            rows = torch.randint(r.shape[0], (n_dead,), generator=generator)
        self.codebook.data[dead] = r.detach()[rows].to(self.codebook.dtype)
        self.unused_steps[dead] = 0
        return n_dead

    def forward(self, r: Tensor, generator: torch.Generator | None = None
                ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``r [B, d] -> (e [B, d], codes [B], codebook_loss, commitment_loss)``."""
        self.last_reseeded = self.reseed_dead(r, generator) if self.training else 0
        codes = self.assign(r)  # [B]
        e = self.codebook[codes]  # [B, d]
        codebook_loss = F.mse_loss(e, r.detach())
        commit_loss = F.mse_loss(r, e.detach())
        if self.training:
            with torch.no_grad():
                used = torch.zeros_like(self.unused_steps, dtype=torch.bool)
                used[codes] = True
                self.unused_steps.add_(1).masked_fill_(used, 0)
        return e, codes, codebook_loss, commit_loss


class ResidualQuantizer(nn.Module):
    """``L`` stacked :class:`VectorQuantizer` levels, each quantising the previous residual."""

    def __init__(self, n_levels: int, codebook_size: int, dim: int, dead_code_steps: int = 0):
        super().__init__()
        self.codebook_size = codebook_size
        self.levels = nn.ModuleList(
            [VectorQuantizer(codebook_size, dim, dead_code_steps) for _ in range(n_levels)])

    @property
    def initialised(self) -> bool:
        return all(bool(vq.initialised) for vq in self.levels)

    @torch.no_grad()
    def init_kmeans(self, z: Tensor, iters: int = 25,
                    generator: torch.Generator | None = None) -> None:
        """Initialise every level by k-means on its residuals of ``z [B, d]`` (level by level)."""
        r = z.detach()  # [B, d]
        for vq in self.levels:
            vq.codebook.data.copy_(kmeans(r, self.codebook_size, iters, generator))
            vq.initialised.fill_(True)
            vq.unused_steps.zero_()
            r = r - vq.codebook[vq.assign(r)]

    def forward(self, z: Tensor, generator: torch.Generator | None = None
                ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``z [B, d] -> (z_q [B, d] straight-through, codes [B, L], codebook, commit loss)``."""
        r = z  # [B, d]
        z_q = torch.zeros_like(z)  # [B, d]
        codes, cb_loss, cm_loss = [], z.new_zeros(()), z.new_zeros(())
        for vq in self.levels:
            e, c, lc, lm = vq(r, generator)
            z_q = z_q + e
            r = r - e.detach()
            codes.append(c)
            cb_loss = cb_loss + lc
            cm_loss = cm_loss + lm
        z_st = z + (z_q - z).detach()  # [B, d] straight-through: forward z_q, backward identity
        return z_st, torch.stack(codes, 1), cb_loss, cm_loss

    def decode_codes(self, codes: Tensor) -> Tensor:
        """``codes [N, L] -> z_q [N, d]`` (sum of the selected code vectors)."""
        return sum(vq.codebook[codes[:, l]] for l, vq in enumerate(self.levels))


class RQVAE(nn.Module):
    """Encoder -> residual quantiser -> decoder (see the module docstring).

    Weights are initialised from torch's global RNG: call ``torch.manual_seed`` before
    constructing for a reproducible model; :meth:`fit` seeds shuffling, k-means and re-seeding.
    """

    def __init__(self, config: RQVAEConfig):
        super().__init__()
        self.config = config
        dims = [config.in_dim, *config.hidden_dims, config.latent_dim]
        self.encoder = MLP(dims)
        self.rq = ResidualQuantizer(config.n_levels, config.codebook_size, config.latent_dim,
                                    config.dead_code_steps)
        self.decoder = MLP(dims[::-1])

    # -- core ---------------------------------------------------------------

    def forward(self, x: Tensor, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """``x [B, D]`` -> dict(x_hat [B, D], codes [B, L], loss, recon, codebook, commit)."""
        z = self.encoder(x)  # [B, d]
        z_q, codes, cb_loss, cm_loss = self.rq(z, generator)
        x_hat = self.decoder(z_q)  # [B, D]
        recon = F.mse_loss(x_hat, x)
        loss = recon + cb_loss + self.config.beta * cm_loss
        return {"x_hat": x_hat, "codes": codes, "loss": loss, "recon": recon,
                "codebook": cb_loss, "commit": cm_loss}

    def _as_tensor(self, x: Any, name: str = "x") -> Tensor:
        t = torch.as_tensor(np.asarray(x) if not isinstance(x, Tensor) else x)
        if t.ndim != 2 or t.shape[1] != self.config.in_dim:
            raise ValueError(f"RQVAE: {name} must have shape [N, {self.config.in_dim}] "
                             f"(config.in_dim), got {tuple(t.shape)}.")
        device = next(self.parameters()).device
        return t.to(device=device, dtype=torch.float32)

    def fit(self, x: Any, epochs: int = 50, batch_size: int = 1024, lr: float = 1e-3,
            seed: int = 0, weight_decay: float = 0.0, verbose: bool = False
            ) -> list[dict[str, float]]:
        """Train with Adam on ``x [N, D]``; returns one dict of mean losses per epoch.

        The codebooks are k-means-initialised from the first batch (unless already initialised).
        History keys: ``epoch, loss, recon, codebook, commit, reseeded`` (codes re-seeded in the
        epoch).
        """
        if epochs < 1 or batch_size < 1 or lr <= 0:
            raise ValueError(f"RQVAE.fit: epochs={epochs}, batch_size={batch_size}, lr={lr} must "
                             "be positive.")
        x = self._as_tensor(x)
        n = x.shape[0]
        gen = torch.Generator().manual_seed(seed)
        opt = torch.optim.Adam(self.parameters(), lr=lr, weight_decay=weight_decay)
        history: list[dict[str, float]] = []
        self.train()
        for epoch in range(epochs):
            perm = torch.randperm(n, generator=gen)
            sums = {"loss": 0.0, "recon": 0.0, "codebook": 0.0, "commit": 0.0}
            reseeded, n_batches = 0, 0
            for start in range(0, n, batch_size):
                xb = x[perm[start:start + batch_size].to(x.device)]  # [B, D]
                if not self.rq.initialised:
                    with torch.no_grad():
                        self.rq.init_kmeans(self.encoder(xb), self.config.kmeans_iters, gen)
                out = self(xb, gen)
                opt.zero_grad(set_to_none=True)
                out["loss"].backward()
                opt.step()
                for key in sums:
                    sums[key] += float(out[key].detach())
                reseeded += sum(vq.last_reseeded for vq in self.rq.levels)
                n_batches += 1
            row = {"epoch": float(epoch), **{k: v / n_batches for k, v in sums.items()},
                   "reseeded": float(reseeded)}
            history.append(row)
            if verbose:
                print(f"epoch {epoch}: loss {row['loss']:.5f} recon {row['recon']:.5f} "
                      f"codebook {row['codebook']:.5f} commit {row['commit']:.5f} "
                      f"reseeded {reseeded}")
        self.eval()
        return history

    @torch.no_grad()
    def encode(self, x: Any, batch_size: int = 4096) -> Tensor:
        """Semantic codes ``x [N, D] -> LongTensor [N, L]`` (eval mode, no re-seeding)."""
        was_training = self.training
        self.eval()
        x = self._as_tensor(x)
        out = [self.rq(self.encoder(x[s:s + batch_size]))[1]  # [b, L]
               for s in range(0, x.shape[0], batch_size)]
        self.train(was_training)
        if not out:
            return torch.zeros((0, self.config.n_levels), dtype=torch.long)
        return torch.cat(out).cpu()

    @torch.no_grad()
    def decode(self, codes: Any) -> Tensor:
        """Reconstruction from codes: ``LongTensor [N, L] -> [N, D]``."""
        c = torch.as_tensor(np.asarray(codes) if not isinstance(codes, Tensor) else codes).long()
        if c.ndim != 2 or c.shape[1] != self.config.n_levels:
            raise ValueError(f"RQVAE.decode(codes=...) needs shape [N, {self.config.n_levels}], "
                             f"got {tuple(c.shape)}. Fix: drop the disambiguation column, "
                             "codes[:, :L].")
        if c.numel() and (int(c.min()) < 0 or int(c.max()) >= self.config.codebook_size):
            raise ValueError(f"RQVAE.decode(codes=...) values must lie in [0, "
                             f"{self.config.codebook_size}).")
        c = c.to(next(self.parameters()).device)
        return self.decoder(self.rq.decode_codes(c)).cpu()

    @torch.no_grad()
    def report(self, codes: Any, x: Any) -> dict[str, Any]:
        """:func:`code_report` of ``codes [N, L]`` plus the reconstruction error of ``x [N, D]``
        decoded from those codes (:func:`reconstruction_error`)."""
        x_t = self._as_tensor(x).cpu()
        out = code_report(codes, self.config.codebook_size)
        out.update(reconstruction_error(x_t, self.decode(codes)))
        return out


# ----------------------------------------------------------------------------- code statistics


def _codes_np(codes: Any, name: str = "codes") -> np.ndarray:
    arr = codes.detach().cpu().numpy() if isinstance(codes, Tensor) else np.asarray(codes)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-d integer matrix [N, L], got shape {arr.shape}.")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{name} must hold integers, got dtype {arr.dtype}.")
    return arr.astype(np.int64, copy=False)


def collision_groups(codes: Any) -> tuple[np.ndarray, np.ndarray]:
    """``(group [N], group_size [G])``: the id of each item's full-code group (groups numbered by
    sorted code) and the size of every group."""
    arr = _codes_np(codes)
    if arr.shape[0] == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    _, inverse = np.unique(arr, axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    return inverse, np.bincount(inverse)


def code_report(codes: Any, codebook_size: int) -> dict[str, Any]:
    """Statistics of a code matrix ``[N, L]`` with ``K = codebook_size`` codes per level.

    * ``utilisation[l]``: fraction of the ``K`` codes of level ``l`` used by at least one item.
    * ``entropy[l]``: entropy (nats) of the empirical code distribution of level ``l``;
      ``entropy_norm[l] = entropy[l] / log K`` (1.0 = uniform over all codes).
    * ``collision_rate``: fraction of items whose full code ``[L]`` is shared with another item.
    * ``n_unique``: number of distinct full codes; ``max_group_size``: largest set of items sharing
      one full code (the vocabulary the :func:`disambiguate` level needs).
    """
    arr = _codes_np(codes)
    n, n_levels = arr.shape
    if codebook_size < 1:
        raise ValueError(f"code_report(codebook_size={codebook_size}) must be >= 1.")
    if n and (arr.min() < 0 or arr.max() >= codebook_size):
        raise ValueError(f"code_report: codes must lie in [0, {codebook_size}) "
                         f"(codebook_size), got [{arr.min()}, {arr.max()}].")
    util, ent, ent_norm = [], [], []
    log_k = math.log(codebook_size) if codebook_size > 1 else 1.0
    for l in range(n_levels):
        counts = np.bincount(arr[:, l], minlength=codebook_size)  # [K]
        util.append(float((counts > 0).sum()) / codebook_size)
        p = counts[counts > 0] / max(n, 1)
        h = float(-(p * np.log(p)).sum()) if n else 0.0
        ent.append(h)
        ent_norm.append(h / log_k if codebook_size > 1 else 0.0)
    _, sizes = collision_groups(arr)
    collided = int(sizes[sizes > 1].sum())
    return {
        "n_items": n,
        "utilisation": util,
        "entropy": ent,
        "entropy_norm": ent_norm,
        "collision_rate": collided / n if n else 0.0,
        "n_unique": int(sizes.size),
        "max_group_size": int(sizes.max()) if sizes.size else 0,
    }


def reconstruction_error(x: Any, x_hat: Any) -> dict[str, float]:
    """``recon_mse`` = mean squared error over all entries; ``recon_rel`` = ``||x - x_hat||_F^2 /
    ||x||_F^2`` (0 = perfect, 1 = as bad as predicting zeros)."""
    x = torch.as_tensor(x, dtype=torch.float64)
    x_hat = torch.as_tensor(x_hat, dtype=torch.float64)
    if x.shape != x_hat.shape:
        raise ValueError(f"reconstruction_error: x {tuple(x.shape)} and x_hat "
                         f"{tuple(x_hat.shape)} differ.")
    sse = float((x - x_hat).pow(2).sum())
    denom = float(x.pow(2).sum())
    return {"recon_mse": sse / max(x.numel(), 1), "recon_rel": sse / denom if denom > 0 else 0.0}


def disambiguate(codes: Any) -> Any:
    """Append a level that makes every full code unique: ``[N, L] -> [N, L + 1]``.

    Collision policy: items sharing the same full code ``[L]`` form a group; the new last column
    numbers the items of each group ``0, 1, 2, ...`` in item (row) order, so an item with a unique
    code gets ``0`` and the result is deterministic. E.g. ``[[0,1],[0,1],[2,3],[0,1]]`` ->
    ``[[0,1,0],[0,1,1],[2,3,0],[0,1,2]]``. The new level needs ``max_group_size`` values
    (:func:`code_report`), which may exceed ``K``. Returns a LongTensor for tensor input, else a
    numpy int64 array.
    """
    arr = _codes_np(codes)
    n = arr.shape[0]
    group, _ = collision_groups(arr)
    order = np.argsort(group, kind="stable")  # items grouped, item order kept inside a group
    sorted_group = group[order]
    is_start = np.ones(n, dtype=bool)
    is_start[1:] = sorted_group[1:] != sorted_group[:-1]
    start_pos = np.maximum.accumulate(np.where(is_start, np.arange(n), 0))  # group start, [N]
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n) - start_pos
    out = np.concatenate([arr, rank[:, None]], axis=1)
    return torch.from_numpy(out) if isinstance(codes, Tensor) else out

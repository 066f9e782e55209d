"""`CompositionModel`: p(composition), the first half of unconditional generation.

Unconditional sampling is *composition first*: draw the element counts from this model, then place the
atoms with the denoiser conditioned on those exact counts (docs/learning_core.md says why: a denoiser
that also decides which of hundreds of null slots become atoms spends most of its training signal on
them and invents elements it never saw).

A composition is written as a short sequence of (element, count) pairs in increasing atomic number,
ended by an end token, and modelled autoregressively by a small GRU::

    SrTiO3  ->  (O, 3) (Ti, 1) (Sr, 1) <end>

At each step the model picks the next element among those of higher Z (so every composition has one
spelling) or ends, then that element's count. Hard rules, not learned probabilities, keep samples in
the training data's support: only elements seen in training (``seen``), at most L atoms of one element
(the tensor's slots), at most as many atoms per cell as the largest training crystal (``max_atoms``),
and at most as many elements as the most varied one (``max_elements``). Those three statistics are
buffers updated from every training batch (``observe``), so they travel with the weights.

The model trains jointly with the denoiser (its NLL is a term of ``GaussianDiffusion``'s loss, on the
compositions of the same batches), so checkpoints, EMA, DeepSpeed and resume need nothing extra.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

_NEG = -1e9
DISTINCT_ROUNDS = 16  # rejection rounds of sample_distinct: at most 16 n draws for n distinct compositions


class CompositionModel(nn.Module):
    def __init__(self, z_at_cell: list[list[int]] | np.ndarray, max_count: int, dim: int = 128, layers: int = 2) -> None:
        """``z_at_cell`` (H, W) atomic number of each cell of the spec's grid (0 = no element),
        ``max_count`` L."""
        super().__init__()
        z = torch.as_tensor(np.asarray(z_at_cell), dtype=torch.long)
        self.grid = tuple(z.shape)
        self.max_count = int(max_count)
        self.dim, self.layers = int(dim), int(layers)
        flat = z.flatten()
        c = flat.numel()
        # rank[cell] = position of the cell in increasing-Z order; cells without an element rank last.
        order = torch.argsort(torch.where(flat > 0, flat, 1000), stable=True)
        rank = torch.empty_like(order)
        rank[order] = torch.arange(c)
        self.register_buffer("z", flat, persistent=False)
        self.register_buffer("rank", rank, persistent=False)
        self.register_buffer("seen", torch.zeros(c, dtype=torch.bool))
        self.register_buffer("max_atoms", torch.zeros((), dtype=torch.long))
        self.register_buffer("max_elements", torch.zeros((), dtype=torch.long))
        # Tokens: element 0 = end, 1..C = cell index + 1; count 0 = "none", 1..L.
        self.element_emb = nn.Embedding(c + 1, dim)
        self.count_emb = nn.Embedding(self.max_count + 1, dim)
        self.start = nn.Parameter(torch.zeros(dim))
        self.gru = nn.GRU(dim, dim, num_layers=layers, batch_first=True)
        self.element_head = nn.Linear(dim, c + 1)
        self.count_head = nn.Sequential(nn.Linear(2 * dim, dim), nn.SiLU(), nn.Linear(dim, self.max_count + 1))

    @property
    def cells(self) -> int:
        return self.z.numel()

    def init_kwargs(self) -> dict[str, Any]:
        return {"z_at_cell": self.z.view(self.grid).tolist(), "max_count": self.max_count, "dim": self.dim,
                "layers": self.layers}

    @classmethod
    def from_kwargs(cls, d: dict[str, Any]) -> "CompositionModel":
        return cls(np.asarray(d["z_at_cell"]), int(d["max_count"]), int(d.get("dim", 128)), int(d.get("layers", 2)))

    # ------------------------------------------------------------------ data -> sequences
    def sequences(self, counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """counts (B, C) atoms per cell -> (elements (B, K+1), counts (B, K+1)): cell index + 1 in Z order,
        then 0 (end) and padding 0; K = the most elements of a row."""
        present = counts > 0
        key = torch.where(present, self.rank[None].expand_as(counts), self.cells + self.rank[None])
        order = torch.argsort(key, dim=1)
        k = int(present.sum(1).max()) if counts.numel() else 0
        order = order[:, :k]
        keep = torch.gather(present, 1, order)
        el = torch.where(keep, order + 1, 0)
        ct = torch.where(keep, torch.gather(counts, 1, order), 0).clamp(max=self.max_count)
        pad = el.new_zeros((el.shape[0], 1))
        return torch.cat([el, pad], 1), torch.cat([ct, pad], 1)

    @torch.no_grad()
    def observe(self, counts: torch.Tensor) -> None:
        """Record the support of the training data (elements, atoms per cell, elements per cell)."""
        counts = counts.to(self.seen.device)
        stats = torch.cat([(counts > 0).any(0).long(), counts.sum(1).max()[None], (counts > 0).sum(1).max()[None]])
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            # every rank sees its own slice of the data; the support is the union (rank 0 saves it)
            torch.distributed.all_reduce(stats, op=torch.distributed.ReduceOp.MAX)
        self.seen |= stats[:-2].bool()
        self.max_atoms.copy_(torch.maximum(self.max_atoms, stats[-2]))
        self.max_elements.copy_(torch.maximum(self.max_elements, stats[-1]))

    # ------------------------------------------------------------------ masks shared by training and sampling
    def _element_mask(self, prev: torch.Tensor, steps_done: int, atoms: torch.Tensor) -> torch.Tensor:
        """(B, C+1) allowed next tokens after ``prev`` (B,) (0 = nothing yet) with ``atoms`` (B,) placed:
        higher Z, seen and room for one more atom, or end."""
        prev_rank = torch.where(prev > 0, self.rank[(prev - 1).clamp(min=0)], -1)
        ok = (self.rank[None] > prev_rank[:, None]) & self.seen[None] & (self.z[None] > 0)
        if self.max_atoms > 0:
            ok = ok & (atoms < self.max_atoms)[:, None]
        if self.max_elements > 0 and steps_done >= int(self.max_elements):
            ok = torch.zeros_like(ok)
        end = torch.full_like(prev, steps_done > 0, dtype=torch.bool)[:, None]
        return torch.cat([end | ~ok.any(1, keepdim=True), ok], 1)

    def _count_mask(self, atoms_so_far: torch.Tensor) -> torch.Tensor:
        """(B, L+1) allowed counts: 1..L, within the largest training cell."""
        n = torch.arange(self.max_count + 1, device=atoms_so_far.device)[None]
        ok = n >= 1
        if self.max_atoms > 0:
            room = (self.max_atoms - atoms_so_far).clamp(min=1)
            ok = ok & (n <= room[:, None])
        return ok

    # ------------------------------------------------------------------ training
    def forward(self, counts: torch.Tensor) -> torch.Tensor:
        """(B,) negative log-likelihood in nats of each row's composition, counts (B, C) atoms per cell."""
        el, ct = self.sequences(counts)
        b, k1 = el.shape
        inp = self.element_emb(el) + self.count_emb(ct)
        h, _ = self.gru(torch.cat([self.start.to(inp.dtype).expand(b, 1, -1), inp[:, :-1]], 1))
        prev = torch.cat([el.new_zeros((b, 1)), el[:, :-1]], 1)
        atoms = torch.cumsum(ct, 1) - ct  # atoms placed before each step
        nll = h.new_zeros(b)
        for s in range(k1):  # K+1 <= a handful of steps: a Python loop costs nothing here
            live = (s == 0) | (prev[:, s] > 0)
            logits = self.element_head(h[:, s]).float().masked_fill(~self._element_mask(prev[:, s], s, atoms[:, s]), _NEG)
            nll = nll + torch.where(live, F.cross_entropy(logits, el[:, s], reduction="none"), 0.0)
            has = el[:, s] > 0
            c_logits = self.count_head(torch.cat([h[:, s], self.element_emb(el[:, s])], -1)).float()
            c_logits = c_logits.masked_fill(~self._count_mask(atoms[:, s]), _NEG)
            nll = nll + torch.where(has, F.cross_entropy(c_logits, ct[:, s].clamp(min=1), reduction="none"), 0.0)
        return nll

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None, required: torch.Tensor | None = None,
               temperature: float = 1.0) -> torch.Tensor:
        """(n, C) atom counts per cell. ``required`` (n, C) bool: exactly these elements (element-type
        requests), only their counts are drawn."""
        if not bool(self.seen.any()):
            raise ValueError("the composition model has seen no training data")
        dev = self.seen.device
        counts = torch.zeros((n, self.cells), dtype=torch.long, device=dev)
        prev = torch.zeros(n, dtype=torch.long, device=dev)
        alive = torch.ones(n, dtype=torch.bool, device=dev)
        atoms = torch.zeros(n, dtype=torch.long, device=dev)
        x = self.start.expand(n, 1, -1)
        state = None
        limit = self.cells if required is not None else max(int(self.max_elements), 1)
        for s in range(limit + 1):
            out, state = self.gru(x, state)
            h = out[:, 0]
            if required is not None:
                # the next required element in Z order, or the end when none is left
                prev_rank = torch.where(prev > 0, self.rank[(prev - 1).clamp(min=0)], -1)
                left = required & (self.rank[None] > prev_rank[:, None])
                key = torch.where(left, self.rank[None].expand_as(left), self.cells + 1)
                nxt = key.argmin(1)
                el = torch.where(left.any(1), nxt + 1, 0)
            else:
                logits = self.element_head(h).float().masked_fill(~self._element_mask(prev, s, atoms), _NEG)
                el = _draw(logits, temperature, generator)
            el = torch.where(alive, el, 0)
            c_logits = self.count_head(torch.cat([h, self.element_emb(el)], -1)).float()
            c_logits = c_logits.masked_fill(~self._count_mask(atoms), _NEG)
            ct = torch.where(el > 0, _draw(c_logits, temperature, generator), 0)
            rows = torch.nonzero(el > 0).flatten()
            counts[rows, el[rows] - 1] = ct[rows]
            atoms = atoms + ct
            alive = alive & (el > 0)
            prev = torch.where(el > 0, el, prev)
            if not bool(alive.any()):
                break
            x = (self.element_emb(el) + self.count_emb(ct))[:, None]
        return counts

    @torch.no_grad()
    def sample_distinct(self, n: int, generator: torch.Generator | None = None, required: torch.Tensor | None = None,
                        rounds: int = DISTINCT_ROUNDS) -> torch.Tensor:
        """(n, C) counts like ``sample``, but no composition twice while the prior has new ones to give:
        sampling without replacement, by rejection. Draws ``n`` at a time, up to ``rounds`` times, and keeps
        each composition's first draw, in draw order; a round that finds nothing new ends the search (the
        support is used up, e.g. element types with few stoichiometries), and the rest repeat the earliest
        repeated draws. Seeded like ``sample``.

        Why: a prior fitted to a few thousand crystals is sharper than the data (the released Perov-5 prior
        repeats a composition in 12.7 % of 1,000 draws, where 1,000 of its real training crystals do in
        2-3 %), and a repeated composition adds a second guess at a crystal already guessed instead of a new
        candidate (docs/learning_core.md)."""
        kept: list[np.ndarray] = []
        spare: list[np.ndarray] = []
        seen: set[bytes] = set()
        for _ in range(max(int(rounds), 1)):
            before = len(kept)
            for row in self.sample(n, generator=generator, required=required).cpu().numpy():
                key = row.tobytes()
                if key not in seen:
                    seen.add(key)
                    kept.append(row)
                    if len(kept) == n:
                        return torch.from_numpy(np.stack(kept)).to(self.seen.device)
                elif len(spare) < n:
                    spare.append(row)
            if len(kept) == before:
                break
        return torch.from_numpy(np.stack(kept + spare[:n - len(kept)])).to(self.seen.device)

    def element_probabilities(self) -> torch.Tensor:
        """(C,) how often each cell's element appears in samples of the first step's distribution (a
        cheap look at what the model learned; used by diagnostics)."""
        h, _ = self.gru(self.start.expand(1, 1, -1))
        none = self.z.new_zeros(1)
        logits = self.element_head(h[:, 0]).float().masked_fill(~self._element_mask(none, 0, none), _NEG)
        return logits.softmax(-1)[0, 1:]


def _draw(logits: torch.Tensor, temperature: float, generator: torch.Generator | None) -> torch.Tensor:
    probs = F.softmax(logits / max(float(temperature), 1e-3), -1)
    return torch.multinomial(probs, 1, generator=generator)[:, 0]


__all__ = ["CompositionModel"]

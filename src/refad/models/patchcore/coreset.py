"""Greedy k-center coreset selection, streamed so the full patch set is never held at once.

PatchCore keeps the patches that cover the normal feature space best: repeatedly the one
farthest from everything chosen so far (greedy k-center), measured after a random projection
to a few dimensions (distances are roughly kept, each step costs less). Selecting from all
patches of a training set at once needs them all in memory, and each step reads all of them.
`StreamingCoreset` therefore selects in two stages: each chunk of images keeps `oversample`
times its share of the final coreset (greedy within the chunk), and the union of those picks
is reduced by one more greedy pass to the final size. Memory is one chunk plus the union.
"""

from __future__ import annotations

import math

import torch


def random_projection(dim: int, out_dim: int, seed: int) -> torch.Tensor | None:
    """A (dim, out_dim) Gaussian projection (Johnson-Lindenstrauss), or None when it would
    not reduce anything."""
    if out_dim <= 0 or out_dim >= dim:
        return None
    g = torch.Generator().manual_seed(seed)
    return torch.randn(dim, out_dim, generator=g, dtype=torch.float32) / math.sqrt(out_dim)


def greedy_k_center(points: torch.Tensor, k: int, seed: int) -> torch.Tensor:
    """Indices of `k` rows of `points` (N, D) chosen by greedy k-center from a seeded start.

    Each step adds the row farthest (in squared Euclidean distance) from the chosen set and
    lowers every row's distance to the set by its distance to the new centre.
    """
    n = points.shape[0]
    k = max(0, min(k, n))
    chosen = torch.empty(k, dtype=torch.long)
    if k == 0:
        return chosen
    start = int(torch.randint(n, (1,), generator=torch.Generator().manual_seed(seed)))
    norms = points.pow(2).sum(dim=1)
    nearest = torch.full((n,), float("inf"), dtype=points.dtype)
    dist = torch.empty_like(nearest)
    index = start
    for i in range(k):
        chosen[i] = index
        centre = points[index]
        torch.addmv(norms, points, centre, alpha=-2.0, out=dist)  # |p|^2 - 2 p.c
        dist += norms[index]  # + |c|^2
        torch.minimum(nearest, dist, out=nearest)
        index = int(torch.argmax(nearest))
    return chosen


class StreamingCoreset:
    """Two-stage greedy k-center over patch chunks (module doc). Feed chunks with `add`, then
    `select` returns the final coreset (full-dimensional rows, float32, CPU) and the integer
    label that came with each row."""

    def __init__(self, ratio: float, dim: int, projection_dim: int, oversample: float,
                 seed: int) -> None:
        self.ratio = ratio
        self.oversample = oversample
        self.seed = seed
        self.projection = random_projection(dim, projection_dim, seed)
        self.total = 0
        self._picks: list[torch.Tensor] = []
        self._labels: list[torch.Tensor] = []

    def _project(self, rows: torch.Tensor) -> torch.Tensor:
        return rows if self.projection is None else rows @ self.projection

    def add(self, rows: torch.Tensor, labels: torch.Tensor | None = None) -> None:
        """One chunk of patches (N, D) and their labels (N,) (default 0): keep its greedy
        picks, `oversample` x its share."""
        rows = rows.detach().to("cpu", torch.float32)
        labels = (torch.zeros(rows.shape[0], dtype=torch.long) if labels is None
                  else labels.detach().to("cpu", torch.long))
        self.total += rows.shape[0]
        keep = min(rows.shape[0], math.ceil(self.oversample * self.ratio * rows.shape[0]))
        picked = greedy_k_center(self._project(rows), keep, self.seed + len(self._picks))
        self._picks.append(rows[picked])
        self._labels.append(labels[picked])

    def select(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The final coreset: `ratio` of all patches added (at least one), and their labels."""
        if not self._picks:
            raise ValueError("coreset: no patches were added")
        union, labels = torch.cat(self._picks), torch.cat(self._labels)
        self._picks, self._labels = [union], [labels]
        k = max(1, round(self.ratio * self.total))
        if k >= union.shape[0]:
            return union, labels
        chosen = greedy_k_center(self._project(union), k, self.seed)
        return union[chosen], labels[chosen]

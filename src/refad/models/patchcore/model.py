"""PatchCore (Roth et al., CVPR 2022) as a unified method: one memory bank of normal patches.

Fit: every training image's locally aggregated levels (the extractor's k x k average pool is
PatchCore's neighbourhood aggregation) are resized to one grid and concatenated into one
feature per patch; greedy k-center coreset selection keeps `coreset_ratio` of all patches of
all categories (`coreset.py`). Score: each test patch's distance to its nearest bank patch is
its anomaly score; the map is upsampled to the input size and Gaussian-smoothed like the other
methods' maps; the image score is the smoothed map's maximum or, optionally, PatchCore's
reweighted maximum. No optimiser, no epochs: the fit is one pass over the normal features.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from refad.errors import CheckpointError
from refad.models.base import FeatureSpec, OnePassModel, Scores
from refad.models.layers import concat_on_grid, grid_index
from refad.models.patchcore.config import PatchCoreConfig
from refad.models.patchcore.coreset import StreamingCoreset
from refad.models.scoring import gaussian_blur, max_score, upsample_maps


def channel_pool_matrix(channels: int, out: int) -> torch.Tensor:
    """(channels, out) matrix averaging channels into `out` adaptive bins (as
    `adaptive_avg_pool1d` does), as a matmul that every runtime exports."""
    m = torch.zeros(channels, out)
    for j in range(out):
        lo, hi = (j * channels) // out, -(-((j + 1) * channels) // out)
        m[lo:hi, j] = 1.0 / (hi - lo)
    return m


def _exporting() -> bool:
    return torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()


class PatchCore(OnePassModel):
    """Memory bank of normal patch features; nearest-neighbour distance is the anomaly score."""

    method = "patchcore"

    def __init__(self, spec: FeatureSpec, config: PatchCoreConfig,
                 device: torch.device | str | None = None) -> None:
        super().__init__(spec, config)
        self.grid = tuple(spec.shapes[grid_index(spec, config.grid_level, "model.grid_level")])
        channels = sum(spec.channels)
        self.embed_dim = min(config.embed_dim or channels, channels)
        pool = None if self.embed_dim == channels else channel_pool_matrix(channels,
                                                                            self.embed_dim)
        self.register_buffer("channel_pool", pool, persistent=False)
        self.register_buffer("bank", torch.zeros(0, self.embed_dim))

    def embed(self, levels: list[torch.Tensor]) -> torch.Tensor:
        """Levels -> (B, H, W, D) patch features on the grid of `grid_level`."""
        feats = concat_on_grid(levels, self.grid, align_corners=False,
                               pool_finer=True).permute(0, 2, 3, 1)
        return feats if self.channel_pool is None else feats @ self.channel_pool

    def fit(self, batches: Iterable[list[torch.Tensor]], seed: int) -> None:
        """Stream batches of normal levels through the coreset, `chunk_patches` patches at a
        time whatever the batch size (a chunk's greedy pass stays in the CPU's caches); the
        bank is the coreset's selection."""
        cfg = self.config
        coreset = StreamingCoreset(cfg.coreset_ratio, self.embed_dim, cfg.projection_dim,
                                   cfg.oversample, seed)
        pending: list[torch.Tensor] = []
        size = 0
        with torch.no_grad():
            for levels in batches:
                rows = self.embed(levels).reshape(-1, self.embed_dim)
                pending.append(rows)
                size += rows.shape[0]
                while size >= cfg.chunk_patches:
                    rows = torch.cat(pending)
                    coreset.add(rows[: cfg.chunk_patches])
                    pending, size = [rows[cfg.chunk_patches :]], rows.shape[0] - cfg.chunk_patches
            if size:
                coreset.add(torch.cat(pending))
            self.bank = coreset.select().to(self.bank.device)

    def adopt_state_shapes(self, state: dict[str, torch.Tensor], where: str) -> None:
        bank = state.get("bank")
        if bank is None:
            return  # the strict load names the missing key
        if bank.ndim != 2 or bank.shape[1] != self.embed_dim or bank.shape[0] < 1:
            raise CheckpointError(
                f"{where}: bank has shape {tuple(bank.shape)}, the model needs (N >= 1, "
                f"{self.embed_dim}) (patchcore)"
            )
        self.bank = torch.empty(bank.shape, dtype=self.bank.dtype, device=self.bank.device)

    def nearest(self, queries: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(M, D) queries -> Euclidean distance to their nearest bank row and its index.

        The search is exact, by |q|^2 - 2 q.b + |b|^2 (one matmul per chunk of queries in
        eager mode, bounded memory for any batch; one matmul in an exported graph, whose batch
        size is not known). That form cancels badly for near neighbours and its rounding
        depends on the matmul's blocking, so the distance to the neighbour found is computed
        again directly: every runtime then gives the same value to float tolerance."""
        bank_sq = self.bank.pow(2).sum(dim=1)
        chunk = self.config.query_chunk
        pieces = [queries] if _exporting() else queries.split(chunk)
        idx = torch.cat([
            (bank_sq - 2.0 * (q @ self.bank.T)).argmin(dim=1) for q in pieces
        ])
        dist = (queries - self.bank[idx]).pow(2).sum(dim=1).sqrt()
        return dist, idx

    def score(self, levels: list[torch.Tensor]) -> Scores:
        if self.bank.shape[0] == 0:
            raise RuntimeError("patchcore: the memory bank is empty (fit the model first)")
        feats = self.embed(levels)
        b, h, w, d = feats.shape
        queries = feats.reshape(-1, d)
        dist, idx = self.nearest(queries)
        patch = dist.view(b, h, w)
        maps = upsample_maps(patch, self.spec.image_size)
        maps = gaussian_blur(maps, self.config.gaussian_sigma)
        if self.config.image_score == "max":
            return Scores(maps=maps, image=max_score(maps))
        return Scores(maps=maps, image=self.reweighted(patch, queries.view(b, h * w, d),
                                                       idx.view(b, h * w)))

    def reweighted(self, patch: torch.Tensor, queries: torch.Tensor,
                   idx: torch.Tensor) -> torch.Tensor:
        """PatchCore's image score: the largest patch distance s*, scaled by how isolated
        its nearest bank patch m* is: w = 1 - softmax over the distances from the test patch
        to m*'s `reweight_neighbours` nearest bank patches, taken at m* itself."""
        flat = patch.flatten(1)
        top = flat.argmax(dim=1)
        s_star = flat.gather(1, top[:, None])[:, 0]
        q_star = queries.gather(1, top[:, None, None].expand(-1, 1, queries.shape[-1]))[:, 0]
        m_star = self.bank[idx.gather(1, top[:, None])[:, 0]]
        k = min(self.config.reweight_neighbours, self.bank.shape[0])
        to_bank = torch.cdist(m_star, self.bank)
        hood = to_bank.topk(k, dim=1, largest=False).indices  # m* itself comes first
        d = (q_star[:, None, :] - self.bank[hood]).pow(2).sum(-1).sqrt()
        weight = 1.0 - torch.softmax(d, dim=1)[:, 0]
        return weight * s_star

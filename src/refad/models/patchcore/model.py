"""PatchCore (Roth et al., CVPR 2022) as a unified method: one memory bank of normal patches.

Fit: every training image's locally aggregated levels (the extractor's k x k average pool is
PatchCore's neighbourhood aggregation) are resized to one grid and concatenated into one
feature per patch; greedy k-center coreset selection keeps `coreset_ratio` of all patches of
all categories (`coreset.py`). Score: each test patch's distance to its nearest bank patch is
its anomaly score (with `route`, nearest among the rows of the picture's product, found from
its nearest training picture's mean patch feature); the map is upsampled to the input size
and Gaussian-smoothed like the other methods' maps; the image score is the smoothed map's
maximum or, optionally, PatchCore's reweighted maximum. No optimiser, no epochs: the fit is
one pass over the normal features.
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
        # routing (config.route): each bank row's product, and every training picture's
        # mean patch feature with its product; saved only by routed runs
        self.register_buffer("bank_group", torch.zeros(0, dtype=torch.long),
                             persistent=config.route)
        self.register_buffer("routes", torch.zeros(0, self.embed_dim), persistent=config.route)
        self.register_buffer("route_group", torch.zeros(0, dtype=torch.long),
                             persistent=config.route)

    def embed(self, levels: list[torch.Tensor]) -> torch.Tensor:
        """Levels -> (B, H, W, D) patch features on the grid of `grid_level`."""
        feats = concat_on_grid(levels, self.grid, align_corners=False,
                               pool_finer=True).permute(0, 2, 3, 1)
        return feats if self.channel_pool is None else feats @ self.channel_pool

    def fit(self, batches: Iterable[list[torch.Tensor]], seed: int,
            groups: torch.Tensor | None = None) -> None:
        """Stream batches of normal levels through the coreset, `chunk_patches` patches at a
        time whatever the batch size (a chunk's greedy pass stays in the CPU's caches); the
        bank is the coreset's selection. With `route`, `groups` (one per picture; None: all
        one product) label the bank rows and the pictures' mean features."""
        cfg = self.config
        coreset = StreamingCoreset(cfg.coreset_ratio, self.embed_dim, cfg.projection_dim,
                                   cfg.oversample, seed)
        pending: list[torch.Tensor] = []
        pending_groups: list[torch.Tensor] = []
        routes: list[torch.Tensor] = []
        seen = size = 0
        with torch.no_grad():
            for levels in batches:
                feats = self.embed(levels)
                b = feats.shape[0]
                group = (torch.zeros(b, dtype=torch.long) if groups is None
                         else groups[seen : seen + b].to("cpu", torch.long))
                if group.shape[0] != b:
                    raise ValueError(f"patchcore: {groups.shape[0]} groups for more pictures")
                seen += b
                routes.append(feats.mean(dim=(1, 2)).to("cpu", torch.float32))
                pending.append(feats.reshape(-1, self.embed_dim))
                pending_groups.append(group.repeat_interleave(feats.shape[1] * feats.shape[2]))
                size += pending[-1].shape[0]
                while size >= cfg.chunk_patches:
                    rows, labels = torch.cat(pending), torch.cat(pending_groups)
                    coreset.add(rows[: cfg.chunk_patches], labels[: cfg.chunk_patches])
                    pending, pending_groups = ([rows[cfg.chunk_patches :]],
                                               [labels[cfg.chunk_patches :]])
                    size = rows.shape[0] - cfg.chunk_patches
            if size:
                coreset.add(torch.cat(pending), torch.cat(pending_groups))
            bank, bank_group = coreset.select()
            device = self.bank.device
            self.bank = bank.to(device)
            if cfg.route:
                routes_t = torch.cat(routes)
                route_group = (torch.zeros(seen, dtype=torch.long) if groups is None
                               else groups[:seen].to("cpu", torch.long))
                # a product whose patches the coreset all dropped keeps one row: the mean
                # patch feature of its first picture (so its pictures always have rows)
                missing = [int(g) for g in route_group.unique() if not (bank_group == g).any()]
                if missing:
                    first = [int((route_group == g).nonzero()[0, 0]) for g in missing]
                    bank = torch.cat([bank, routes_t[first]])
                    bank_group = torch.cat([bank_group, torch.tensor(missing)])
                    self.bank = bank.to(device)
                self.bank_group = bank_group.to(device)
                self.routes = routes_t.to(device)
                self.route_group = route_group.to(device)

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
        if not self.config.route:
            return
        routes, bank_group, route_group = (state.get(k) for k in
                                           ("routes", "bank_group", "route_group"))
        if routes is None or bank_group is None or route_group is None:
            return  # the strict load names the missing key
        if (bank_group.shape != bank.shape[:1] or routes.ndim != 2
                or routes.shape[1] != self.embed_dim or route_group.shape != routes.shape[:1]
                or routes.shape[0] < 1):
            raise CheckpointError(
                f"{where}: routing tables of shapes {tuple(bank_group.shape)}, "
                f"{tuple(routes.shape)}, {tuple(route_group.shape)} do not fit a bank of "
                f"{bank.shape[0]} rows (patchcore)")
        self.bank_group = torch.empty_like(bank_group, device=self.bank.device)
        self.routes = torch.empty(routes.shape, dtype=self.routes.dtype, device=self.bank.device)
        self.route_group = torch.empty_like(route_group, device=self.bank.device)

    def route(self, feats: torch.Tensor) -> torch.Tensor:
        """(B, H, W, D) features -> (B,) product of each picture's nearest training picture
        by mean patch feature."""
        means = feats.mean(dim=(1, 2))
        d = (means.pow(2).sum(1, keepdim=True) - 2.0 * means @ self.routes.T
             + self.routes.pow(2).sum(1)[None])
        return self.route_group[d.argmin(dim=1)]

    def nearest(self, queries: torch.Tensor,
                groups: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, M, D) queries -> (B, M) Euclidean distance to their nearest bank row and its
        index; with `groups` (B,), among the rows of each picture's group only.

        The search is exact, by |q|^2 - 2 q.b + |b|^2 (one matmul per chunk of queries in
        eager mode, bounded memory for any batch; one matmul in an exported graph, whose batch
        size is not known). That form cancels badly for near neighbours and its rounding
        depends on the matmul's blocking, so the distance to the neighbour found is computed
        again directly: every runtime then gives the same value to float tolerance."""
        bank_sq = self.bank.pow(2).sum(dim=1)
        chunk = self.config.query_chunk
        d = queries.shape[2]
        if groups is None:
            flat = queries.reshape(-1, d)
            pieces = [flat] if _exporting() else flat.split(chunk)
            idx = torch.cat([(bank_sq - 2.0 * (q @ self.bank.T)).argmin(dim=1)
                             for q in pieces]).reshape(queries.shape[:2])
        elif _exporting():  # another product's rows are out of reach: one masked matmul
            reach = torch.where(self.bank_group[None] == groups[:, None], bank_sq[None],
                                torch.full_like(bank_sq, 1e30)[None])
            idx = (reach[:, None] - 2.0 * (queries @ self.bank.T)).argmin(dim=2)
        else:  # eager: each product's pictures against that product's rows only
            idx = torch.empty(queries.shape[:2], dtype=torch.long, device=queries.device)
            for group in groups.unique():
                pictures = groups == group
                rows = (self.bank_group == group).nonzero()[:, 0]  # never empty (fit)
                sub = self.bank[rows]
                flat = queries[pictures].reshape(-1, d)
                found = torch.cat([(bank_sq[rows] - 2.0 * (q @ sub.T)).argmin(dim=1)
                                   for q in flat.split(chunk)])
                idx[pictures] = rows[found].view(-1, queries.shape[1])
        dist = (queries - self.bank[idx]).pow(2).sum(dim=-1).sqrt()
        return dist, idx

    def score(self, levels: list[torch.Tensor]) -> Scores:
        if self.bank.shape[0] == 0:
            raise RuntimeError("patchcore: the memory bank is empty (fit the model first)")
        feats = self.embed(levels)
        b, h, w, d = feats.shape
        queries = feats.reshape(b, h * w, d)
        dist, idx = self.nearest(queries, self.route(feats) if self.config.route else None)
        patch = dist.view(b, h, w)
        maps = upsample_maps(patch, self.spec.image_size)
        maps = gaussian_blur(maps, self.config.gaussian_sigma)
        if self.config.image_score == "max":
            return Scores(maps=maps, image=max_score(maps))
        return Scores(maps=maps, image=self.reweighted(patch, queries, idx))

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

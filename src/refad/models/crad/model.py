"""CRAD: Continuous Memory Representation for Anomaly Detection (Lee, Kim et al., ECCV 2024).

Normal features are stored in two learnable *continuous* grids instead of a discrete memory:
- a local grid (C x g x g): every token maps to its own 2-D coordinate and reads a C-vector;
- a global grid (C*H*W x G x G): every image maps to one coordinate and reads a whole map.
Coordinates come from small tanh networks and are read with bilinear `grid_sample`, so similar
features land on nearby, interpolated memory cells. The network sees its input only through
these 2-D coordinates, which is what prevents an identity shortcut. The two reads are fused by
MobileNetV3 bottlenecks; the output is then refined towards the input where they already agree.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from refad.models.base import Scores
from refad.models.crad.config import CRADConfig
from refad.models.grid import GridReconstructionModel
from refad.models.layers import (
    MobileBottleneck,
    Noise,
    draw_normal,
    draw_uniform,
)
from refad.models.scoring import avg_pool_max_score, l2_map, upsample_maps


def refine(rec: torch.Tensor, target: torch.Tensor, config: CRADConfig) -> torch.Tensor:
    """Pull the reconstruction towards the target where they already agree.

    m = 1 - round(clip(coef * mse, 0, 1)) is 1 where the channel-mean squared error is small,
    sim = w_m * m + w_c * cos(rec, target) per token, rec' = sim * target + (1 - sim) * rec.
    """
    mse = (rec - target).pow(2).mean(dim=1)
    m = 1.0 - torch.round((mse * config.mse_coef).clamp(0.0, 1.0))
    cos = F.cosine_similarity(rec, target, dim=1)
    sim = (config.mse_weight * m + config.cos_weight * cos)[:, None]
    return sim * target + (1.0 - sim) * rec


def smooth_maps(maps: torch.Tensor, kernel: int) -> torch.Tensor:
    """k x k mean filter, stride 1, zero padding counted in the mean (torch's avg_pool default).

    CRAD's evaluation applies it to the maps already upsampled to the input size, for pixel
    metrics and before the image score alike.
    """
    if kernel <= 1:
        return maps
    return F.avg_pool2d(maps[:, None], kernel, stride=1, padding=kernel // 2)[:, 0]


class CRADNetwork(nn.Module):
    """(B, C, H, W) features -> (B, C, H, W) reconstruction before refinement."""

    def __init__(self, channels: int, height: int, width: int, config: CRADConfig) -> None:
        super().__init__()
        c = channels
        self.height, self.width = height, width
        self.local_grid = nn.Parameter(torch.empty(1, c, config.local_grid, config.local_grid))
        self.global_grid = nn.Parameter(
            torch.empty(1, c * height * width, config.global_grid, config.global_grid)
        )
        self.local_coords = nn.Sequential(
            nn.Conv2d(c, c, 1), nn.Tanh(), nn.Conv2d(c, 2, 1), nn.Tanh()
        )
        self.global_coords = nn.Sequential(nn.Linear(c, c), nn.Tanh(), nn.Linear(c, 2), nn.Tanh())
        self.fusion = nn.Sequential(
            *(
                MobileBottleneck(2 * c, config.expansion, se_reduction=config.se_reduction)
                for _ in range(config.num_blocks)
            )
        )
        self.recover = nn.Conv2d(2 * c, c, 1, bias=False)
        self._init_weights()

    def _init_weights(self) -> None:
        """As the authors: grids xavier-normal; conv/linear weights N(0, 0.01), biases 0."""
        nn.init.xavier_normal_(self.local_grid)
        nn.init.xavier_normal_(self.global_grid)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.normal_(m.weight, std=0.01)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def coordinates(
        self, features: torch.Tensor, noise: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-token local coordinates (B, H, W, 2) and per-image global ones (B, 2), in [-1, 1]
        before noise; `noise` (B, 2, H, W) is added to the local ones (training only)."""
        local = self.local_coords(features)
        if noise is not None:
            local = local + noise
        glob = self.global_coords(features.mean(dim=(2, 3)))
        return local.permute(0, 2, 3, 1), glob

    def read_memory(self, local: torch.Tensor, glob: torch.Tensor) -> torch.Tensor:
        """Bilinear reads of both grids -> (B, 2C, H, W), global part first."""
        b = local.shape[0]
        grid = self.global_grid.to(local.dtype)
        g = F.grid_sample(grid, glob.view(1, b, 1, 2), align_corners=False)  # (1, CHW, B, 1)
        g = g[0, :, :, 0].t().reshape(b, -1, self.height, self.width)
        cells = self.local_grid.to(local.dtype).expand(b, -1, -1, -1)
        loc = F.grid_sample(cells, local, align_corners=False)
        return torch.cat((g, loc), dim=1)

    def forward(self, features: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        local, glob = self.coordinates(features, noise)
        return self.recover(self.fusion(self.read_memory(local, glob)))


class CRAD(GridReconstructionModel):
    """CRAD over the concatenation of the levels on the finest requested grid."""

    method = "crad"

    config_class = CRADConfig
    network = CRADNetwork

    def parameter_groups(self, lr: float) -> list[dict]:
        """Network at `lr`, the two grids at `grid_lr` (the authors: 1e-3 and 0.1)."""
        grids = [self.net.local_grid, self.net.global_grid]
        ids = {id(p) for p in grids}
        rest = [p for p in self.parameters() if id(p) not in ids and p.requires_grad]
        return [{"params": rest, "lr": lr}, {"params": grids, "lr": self.config.grid_lr}]

    def _noise(self, target: torch.Tensor, generator: Noise) -> torch.Tensor | None:
        """Coordinate noise for one training step: with probability noise_prob, else none.

        Drawn with the shared noise helpers, so a data-parallel shard gets its rows of the
        noise one process would draw for the whole batch.
        """
        cfg = self.config
        if not self.training or cfg.noise_std <= 0 or cfg.noise_prob <= 0:
            return None
        if draw_uniform(generator, target.device) >= cfg.noise_prob:
            return None
        b, _, h, w = target.shape
        noise = draw_normal((b, 2, h, w), generator, target.device, target.dtype)
        return noise * cfg.noise_std

    def raw_reconstruction(
        self, target: torch.Tensor, generator: Noise = None
    ) -> torch.Tensor:
        """The network output before output refinement."""
        return self.net(target, self._noise(target, generator))

    def reconstruct(
        self, targets: list[torch.Tensor], generator: Noise = None
    ) -> list[torch.Tensor]:
        """Refined reconstructions rec' (what the loss and the maps use)."""
        (target,) = targets
        return [refine(self.raw_reconstruction(target, generator), target, self.config)]

    def score_reconstruction(
        self, targets: list[torch.Tensor], recs: list[torch.Tensor]
    ) -> Scores:
        """L2 map upsampled, then the 21x21 mean filter; max of its average-pooled version."""
        (rec,) = recs
        maps = upsample_maps(l2_map(rec, targets[0]), self.spec.image_size, align_corners=True)
        maps = smooth_maps(maps, self.config.smooth_kernel)
        return Scores(maps=maps, image=avg_pool_max_score(maps, self.config.image_pool))

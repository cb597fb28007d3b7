"""Score-map rules shared by the methods: upsampling, smoothing and image-score reduction."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from refad.pipeline.preprocess import as_hw


def upsample_maps(
    maps: torch.Tensor, size: int | Sequence[int], align_corners: bool = True
) -> torch.Tensor:
    """(B, h, w) -> (B, H, W) at `size` ((height, width); an integer: square), bilinear."""
    return F.interpolate(
        maps[:, None], size=as_hw(size), mode="bilinear", align_corners=align_corners
    )[:, 0]


def gaussian_kernel_1d(sigma: float, truncate: float = 4.0) -> torch.Tensor:
    """Normalised 1-D Gaussian with scipy.ndimage's support (radius = int(truncate*sigma+0.5))."""
    radius = int(truncate * sigma + 0.5)
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def _pad_symmetric(maps: torch.Tensor, radius: int, dim: int) -> torch.Tensor:
    """Half-sample symmetric padding (scipy's 'reflect': d c b a | a b c d | d c b a)."""
    n = maps.shape[dim]
    idx = torch.arange(-radius, n + radius, device=maps.device)
    period = 2 * n
    idx = torch.remainder(idx, period)
    idx = torch.where(idx >= n, period - 1 - idx, idx)
    return maps.index_select(dim, idx)


def gaussian_blur(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (B, H, W) maps, equal to scipy.ndimage.gaussian_filter per map.

    Runs on the maps' device, so GPU scoring needs no round trip to NumPy.
    """
    if sigma <= 0:
        return maps
    kernel = gaussian_kernel_1d(sigma).to(device=maps.device, dtype=maps.dtype)
    radius = (kernel.numel() - 1) // 2
    x = maps[:, None]
    x = _pad_symmetric(x, radius, dim=2)
    x = F.conv2d(x, kernel.view(1, 1, -1, 1))
    x = _pad_symmetric(x, radius, dim=3)
    x = F.conv2d(x, kernel.view(1, 1, 1, -1))
    return x[:, 0]


def max_score(maps: torch.Tensor) -> torch.Tensor:
    """(B, H, W) -> (B,) maximum of each map."""
    return maps.flatten(1).amax(dim=1)


def avg_pool_max_score(maps: torch.Tensor, kernel: int) -> torch.Tensor:
    """Image score = max of the map after a kernel x kernel average pool (stride 1, no padding)."""
    kernel = min(kernel, maps.shape[-1], maps.shape[-2])
    pooled = F.avg_pool2d(maps[:, None], kernel_size=kernel, stride=1)
    return max_score(pooled[:, 0])


def mse_cosine_map(rec: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) pair -> (B, H, W): channel-mean squared error plus (1 - cosine similarity)."""
    mse = (rec - target).pow(2).mean(dim=1)
    cos = F.cosine_similarity(rec, target, dim=1)
    return mse + (1.0 - cos)


def l2_map(rec: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) pair -> (B, H, W): Euclidean norm of the error over channels."""
    return (rec - target).pow(2).sum(dim=1).sqrt()

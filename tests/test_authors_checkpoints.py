"""Importing the authors' checkpoints (RLR, UniAD, CRAD) on synthetic state_dicts.

Each test builds a state_dict with the key names and shapes that the authors' code writes,
saves it the way their trainers do (with their metadata), imports it, and compares refad's
reconstruction with an independent re-statement of the authors' forward pass written here
(functional torch code over the authors'-named tensors).
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from refad.config import apply_overrides
from refad.config.presets import preset
from refad.errors import CheckpointError, ConfigError, RefadError
from refad.models.authors import import_authors_checkpoint
from refad.models.base import FeatureSpec
from refad.models.rlr.model import RLR
from refad.runs import open_run
from refad.runs.imported import import_run, write_imported_run

ATOL = 2e-5

# ------------------------------------------------------------------ synthetic authors' weights


def _w(g: torch.Generator, *shape: int, scale: float = 0.2) -> torch.Tensor:
    return torch.randn(*shape, generator=g) * scale


def _norm(sd: dict, name: str, d: int, g: torch.Generator) -> None:
    sd[f"{name}.weight"] = 1 + _w(g, d, scale=0.1)
    sd[f"{name}.bias"] = _w(g, d, scale=0.1)


def _mha(sd: dict, name: str, d: int, g: torch.Generator) -> None:
    sd[f"{name}.in_proj_weight"] = _w(g, 3 * d, d)
    sd[f"{name}.in_proj_bias"] = _w(g, 3 * d, scale=0.05)
    sd[f"{name}.out_proj.weight"] = _w(g, d, d)
    sd[f"{name}.out_proj.bias"] = _w(g, d, scale=0.05)


def _linear(sd: dict, name: str, out: int, inp: int, g: torch.Generator) -> None:
    sd[f"{name}.weight"] = _w(g, out, inp)
    sd[f"{name}.bias"] = _w(g, out, scale=0.05)


def uniad_state(c: int, h: int, w: int, d: int, ffn: int, enc: int, dec: int) -> dict:
    """Keys of zhiyuanyou/UniAD's `UniAD` module (learned positions, post-norm)."""
    g = torch.Generator().manual_seed(11)
    sd: dict = {}
    _linear(sd, "input_proj", d, c, g)
    _linear(sd, "output_proj", c, d, g)
    sd["pos_embed.row_embed.weight"] = torch.rand(h, d // 2, generator=g)
    sd["pos_embed.col_embed.weight"] = torch.rand(w, d // 2, generator=g)
    for i in range(enc):
        p = f"transformer.encoder.layers.{i}"
        _mha(sd, f"{p}.self_attn", d, g)
        _linear(sd, f"{p}.linear1", ffn, d, g)
        _linear(sd, f"{p}.linear2", d, ffn, g)
        _norm(sd, f"{p}.norm1", d, g)
        _norm(sd, f"{p}.norm2", d, g)
    for i in range(dec):
        p = f"transformer.decoder.layers.{i}"
        sd[f"{p}.learned_embed.weight"] = _w(g, h * w, d, scale=1.0)
        _mha(sd, f"{p}.self_attn", d, g)
        _mha(sd, f"{p}.multihead_attn", d, g)
        _linear(sd, f"{p}.linear1", ffn, d, g)
        _linear(sd, f"{p}.linear2", d, ffn, g)
        for k in (1, 2, 3):
            _norm(sd, f"{p}.norm{k}", d, g)
    _norm(sd, "transformer.decoder.norm", d, g)
    return sd


def _bn(sd: dict, name: str, c: int, g: torch.Generator) -> None:
    _norm(sd, name, c, g)
    sd[f"{name}.running_mean"] = _w(g, c, scale=0.1)
    sd[f"{name}.running_var"] = 0.5 + torch.rand(c, generator=g)
    sd[f"{name}.num_batches_tracked"] = torch.tensor(7)


def crad_state(
    c: int, h: int, w: int, blocks: int, exp: int, local: int = 8, glob: int = 4
) -> dict:
    """Keys of tae-mo/CRAD's `CRAD` module (MobileNetV3-bottleneck version)."""
    g = torch.Generator().manual_seed(12)
    sd: dict = {
        "query.0": _w(g, 1, c, local, local, scale=1.0),
        "query.1": _w(g, 1, c * h * w, glob, glob, scale=1.0),
        "coord_.0.weight": _w(g, c, c), "coord_.0.bias": _w(g, c),
        "coord_.2.weight": _w(g, 2, c, scale=0.5), "coord_.2.bias": _w(g, 2),
        "coord.0.weight": _w(g, c, c, 1, 1), "coord.0.bias": _w(g, c),
        "coord.2.weight": _w(g, 2, c, 1, 1, scale=0.5), "coord.2.bias": _w(g, 2),
    }
    for i in range(blocks):
        p = f"layer.{i}.conv"
        sd[f"{p}.0.weight"] = _w(g, exp, 2 * c, 1, 1)
        _bn(sd, f"{p}.1", exp, g)
        sd[f"{p}.3.weight"] = _w(g, exp, 1, 3, 3)
        _bn(sd, f"{p}.4", exp, g)
        sd[f"{p}.5.fc.0.weight"] = _w(g, exp // 4, exp)
        sd[f"{p}.5.fc.2.weight"] = _w(g, exp, exp // 4)
        sd[f"{p}.7.weight"] = _w(g, 2 * c, exp, 1, 1)
        _bn(sd, f"{p}.8", 2 * c, g)
    sd["recover.weight"] = _w(g, c, 2 * c, 1, 1)
    return sd


def rlr_level_state(c: int, n: int, d: int, layers: int, seed: int) -> dict:
    """Keys of hlr7999/RLR's per-level `RLR` module (blocks mca + nsa, parallel, no gate)."""
    g = torch.Generator().manual_seed(seed)
    sd: dict = {
        "embedding.project_embedding.project.weight": _w(g, d, c, 1),
        "embedding.project_embedding.project.bias": _w(g, d, scale=0.05),
        "ref_mca": torch.randn(1, n, c, generator=g),
        "ref_mca_embedding.project_embedding.project.weight": _w(g, d, c, 1),
        "ref_mca_embedding.project_embedding.project.bias": _w(g, d, scale=0.05),
    }
    for i in range(layers):
        p = f"encoder.encode_layers.{i}"
        _mha(sd, f"{p}.mca", d, g)
        _mha(sd, f"{p}.nsa", d, g)
        _norm(sd, f"{p}.norm1", d, g)
        _linear(sd, f"{p}.ffn.fc1", 4 * d, d, g)
        _linear(sd, f"{p}.ffn.fc2", d, 4 * d, g)
        _norm(sd, f"{p}.norm2", d, g)
    _norm(sd, "encoder.norm", d, g)
    _linear(sd, "projection", c, d, g)
    return sd


# ------------------------------------------------- independent re-statement of their forwards


def _window_mask(h: int, w: int, p: int, inside: float, outside: float) -> torch.Tensor:
    """(HW, HW) additive mask, built position by position as a p x p clipped window."""
    m = torch.full((h, w, h, w), outside)
    for y in range(h):
        for x in range(w):
            m[y, x, max(y - p // 2, 0): y + p // 2 + 1, max(x - p // 2, 0): x + p // 2 + 1] = inside
    return m.view(h * w, h * w)


def _attn(sd: dict, name: str, heads: int, q, k, v, mask) -> torch.Tensor:
    """torch's packed multi-head attention, sequence-first (L, B, E)."""
    d = q.shape[-1]
    return F.multi_head_attention_forward(
        q, k, v, d, heads, sd[f"{name}.in_proj_weight"], sd[f"{name}.in_proj_bias"], None, None,
        False, 0.0, sd[f"{name}.out_proj.weight"], sd[f"{name}.out_proj.bias"], training=False,
        need_weights=False, attn_mask=mask,
    )[0]


def _ln(sd: dict, name: str, x: torch.Tensor) -> torch.Tensor:
    return F.layer_norm(x, x.shape[-1:], sd[f"{name}.weight"], sd[f"{name}.bias"])


def _lin(sd: dict, name: str, x: torch.Tensor) -> torch.Tensor:
    return F.linear(x, sd[f"{name}.weight"], sd.get(f"{name}.bias"))


def authors_neck(levels: list[torch.Tensor], strides: list[int], out_stride: int) -> torch.Tensor:
    """Their MFCN: UpsamplingBilinear2d by in_stride / out_stride per level, concatenated."""
    return torch.cat(
        [
            nn.UpsamplingBilinear2d(scale_factor=s / out_stride)(f)
            for f, s in zip(levels, strides, strict=True)
        ],
        dim=1,
    )


def authors_uniad(sd: dict, feat: torch.Tensor, heads: int, window: int, stride: int):
    """UniAD forward (post-norm, learned positions, masks on) -> (feature_rec, pred)."""
    b, c, h, w = feat.shape
    src = _lin(sd, "input_proj", feat.permute(2, 3, 0, 1).reshape(h * w, b, c).contiguous())
    cols, rows = sd["pos_embed.col_embed.weight"], sd["pos_embed.row_embed.weight"]
    pos = torch.cat([cols[None].repeat(h, 1, 1), rows[:, None].repeat(1, w, 1)], -1)
    pos = pos.flatten(0, 1)[:, None].repeat(1, b, 1)
    mask = _window_mask(h, w, window, float("-inf"), 0.0)
    n_enc = len({k.split(".")[3] for k in sd if k.startswith("transformer.encoder.layers")})
    n_dec = len({k.split(".")[3] for k in sd if k.startswith("transformer.decoder.layers")})
    for i in range(n_enc):
        p = f"transformer.encoder.layers.{i}"
        src = _ln(sd, f"{p}.norm1", src + _attn(sd, f"{p}.self_attn", heads, src + pos,
                                                src + pos, src, mask))
        ffn = _lin(sd, f"{p}.linear2", F.relu(_lin(sd, f"{p}.linear1", src)))
        src = _ln(sd, f"{p}.norm2", src + ffn)
    memory = out = src
    for i in range(n_dec):
        p = f"transformer.decoder.layers.{i}"
        tgt = sd[f"{p}.learned_embed.weight"][:, None].repeat(1, b, 1)
        tgt = _ln(sd, f"{p}.norm1", tgt + _attn(sd, f"{p}.self_attn", heads, tgt + pos,
                                                memory + pos, memory, mask))
        tgt = _ln(sd, f"{p}.norm2", tgt + _attn(sd, f"{p}.multihead_attn", heads, tgt + pos,
                                                out + pos, out, mask))
        ffn = _lin(sd, f"{p}.linear2", F.relu(_lin(sd, f"{p}.linear1", tgt)))
        out = _ln(sd, f"{p}.norm3", tgt + ffn)
    out = _ln(sd, "transformer.decoder.norm", out)
    rec = _lin(sd, "output_proj", out).reshape(h, w, b, c).permute(2, 3, 0, 1)
    pred = torch.sqrt(((rec - feat) ** 2).sum(dim=1, keepdim=True))
    return rec, nn.UpsamplingBilinear2d(scale_factor=stride)(pred)[:, 0]


def _hswish(x: torch.Tensor) -> torch.Tensor:
    return x * F.relu6(x + 3.0) / 6.0


def _bn_eval(sd: dict, name: str, x: torch.Tensor) -> torch.Tensor:
    return F.batch_norm(x, sd[f"{name}.running_mean"], sd[f"{name}.running_var"],
                        sd[f"{name}.weight"], sd[f"{name}.bias"], training=False, eps=1e-5)


def authors_crad(sd: dict, feat: torch.Tensor, stride: int = 8):
    """CRAD eval forward -> (raw reconstruction, refined reconstruction, smoothed pred)."""
    b, c, h, w = feat.shape
    gl = torch.tanh(_lin(sd, "coord_.0", feat.mean(dim=(2, 3))))
    gl = torch.tanh(_lin(sd, "coord_.2", gl))
    lo = torch.tanh(F.conv2d(feat, sd["coord.0.weight"], sd["coord.0.bias"]))
    lo = torch.tanh(F.conv2d(lo, sd["coord.2.weight"], sd["coord.2.bias"]))
    glob = F.grid_sample(sd["query.1"], gl.view(1, b, 1, 2), align_corners=False)
    x = torch.cat([
        glob.permute(2, 3, 0, 1).reshape(b, -1, h, w),
        F.grid_sample(sd["query.0"].repeat(b, 1, 1, 1), lo.permute(0, 2, 3, 1),
                      align_corners=False),
    ], dim=1)
    n = len({k.split(".")[1] for k in sd if k.startswith("layer.")})
    for i in range(n):
        p = f"layer.{i}.conv"
        y = _hswish(_bn_eval(sd, f"{p}.1", F.conv2d(x, sd[f"{p}.0.weight"])))
        e = y.shape[1]
        y = _bn_eval(sd, f"{p}.4", F.conv2d(y, sd[f"{p}.3.weight"], padding=1, groups=e))
        gate = F.relu(F.linear(y.mean(dim=(2, 3)), sd[f"{p}.5.fc.0.weight"]))
        gate = F.relu6(F.linear(gate, sd[f"{p}.5.fc.2.weight"]) + 3.0) / 6.0
        y = _hswish(y * gate[:, :, None, None])
        x = x + _bn_eval(sd, f"{p}.8", F.conv2d(y, sd[f"{p}.7.weight"]))
    raw = F.conv2d(x, sd["recover.weight"])
    mse = 1 - torch.round((((raw - feat) ** 2).mean(dim=1) * 0.05).clamp(0, 1))
    sim = (0.3 * mse + 0.7 * F.cosine_similarity(raw, feat, dim=1))[:, None]
    refined = sim * feat + (1 - sim) * raw
    pred = torch.sqrt(((refined - feat) ** 2).sum(dim=1, keepdim=True))
    pred = nn.UpsamplingBilinear2d(scale_factor=stride)(pred)
    return raw, refined, F.avg_pool2d(pred, 21, 1, 10)[:, 0]


def authors_rlr_positions(d: int, h: int, w: int) -> torch.Tensor:
    """Their fixed table (d, h, w): x in channels [0, d/2), y after, raw integer positions."""
    half = d // 2
    pe = torch.zeros(d, h, w)
    rate = torch.exp(torch.arange(0.0, half, 2) * -(math.log(1e4) / half))
    xs = torch.arange(0.0, w)[:, None] * rate  # (w, half/2)
    ys = torch.arange(0.0, h)[:, None] * rate
    pe[0:half:2] = xs.sin().t()[:, None, :].expand(-1, h, -1)
    pe[1:half:2] = xs.cos().t()[:, None, :].expand(-1, h, -1)
    pe[half::2] = ys.sin().t()[:, :, None].expand(-1, -1, w)
    pe[half + 1::2] = ys.cos().t()[:, :, None].expand(-1, -1, w)
    return pe


def authors_rlr_level(sd: dict, tokens: torch.Tensor, h: int, w: int, window: int):
    """One level of their RLR (mca + nsa, alpha 2, 8 heads) on (B, L, C) tokens."""
    b = tokens.shape[0]
    d = sd["embedding.project_embedding.project.weight"].shape[0]
    pos = authors_rlr_positions(d, h, w).permute(1, 2, 0).reshape(h * w, d)

    def embed(prefix: str, x: torch.Tensor) -> torch.Tensor:
        y = F.conv1d(x.permute(0, 2, 1), sd[f"{prefix}.project.weight"],
                     sd[f"{prefix}.project.bias"]).transpose(1, 2)
        return (y + pos).contiguous()

    x = embed("embedding.project_embedding", tokens)
    ref = embed("ref_mca_embedding.project_embedding", sd["ref_mca"].repeat(b, 1, 1))
    inside_only = _window_mask(h, w, window, 0.0, float("-inf"))
    outside_only = _window_mask(h, w, window, float("-inf"), 0.0)
    seq = lambda t: t.transpose(0, 1).contiguous()  # noqa: E731 - batch- <-> sequence-first
    n = len({k.split(".")[2] for k in sd if k.startswith("encoder.encode_layers")})
    for i in range(n):
        p = f"encoder.encode_layers.{i}"
        mca = seq(_attn(sd, f"{p}.mca", 8, seq(x), seq(ref), seq(ref), inside_only))
        nsa = seq(_attn(sd, f"{p}.nsa", 8, seq(x), seq(ref), seq(x), outside_only))
        x = _ln(sd, f"{p}.norm1", 2 * mca + nsa)
        y = _lin(sd, f"{p}.ffn.fc2", F.gelu(_lin(sd, f"{p}.ffn.fc1", x)))
        x = _ln(sd, f"{p}.norm2", x + y)
    return _lin(sd, "projection", _ln(sd, "encoder.norm", x))


# --------------------------------------------------------------------------- saving like them


@pytest.fixture
def fake_easydict(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """An `easydict` stand-in to pickle the authors' config objects; gone before loading."""
    pkg = tmp_path / "fakepkgs" / "easydict"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(
        "class EasyDict(dict):\n"
        "    def __init__(self, d=None):\n"
        "        super().__init__()\n"
        "        for k, v in (d or {}).items():\n"
        "            self[k] = v\n"
        "            setattr(self, k, v)\n"
    )
    monkeypatch.syspath_prepend(str(pkg.parent))
    import easydict

    yield easydict.EasyDict
    monkeypatch.delitem(sys.modules, "easydict")


def save_like_model_helper(path: Path, sd: dict, easydict_cls) -> None:
    """As tools/train_val.py: DDP prefixes, the whole ModelHelper, config and metrics along."""
    state = OrderedDict({"module.backbone.conv_stem.weight": torch.zeros(4, 3, 3, 3)})
    state.update({f"module.reconstruction.{k}": v for k, v in sd.items()})
    arch = [easydict_cls({"name": "reconstruction", "kwargs": easydict_cls({"hidden_dim": 8})})]
    torch.save({
        "epoch": 10, "arch": arch, "state_dict": state, "best_metric": np.float64(0.97),
        "optimizer": {"state": {}, "param_groups": [{"lr": 1e-4, "params": [0]}]},
    }, path)


# ---------------------------------------------------------------------------------- UniAD

UNIAD_SPEC = FeatureSpec((1, 2, 3), (6, 8, 10), ((32, 32), (16, 16), (8, 8)), 128)


def levels_for(spec: FeatureSpec, seed: int = 5, batch: int = 2) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, c, h, w, generator=g).abs() for c, (h, w) in
            zip(spec.channels, spec.shapes, strict=True)]


def test_uniad_import_reproduces_the_authors_network(tmp_path: Path, fake_easydict) -> None:
    sd = uniad_state(24, 8, 8, d=32, ffn=48, enc=2, dec=2)
    path = tmp_path / "ckpt.pth.tar"
    save_like_model_helper(path, sd, fake_easydict)
    model, report = import_authors_checkpoint(
        "uniad", path, UNIAD_SPEC, {"num_heads": 4, "hidden_dim": 999}
    )
    with pytest.raises(Exception, match="easydict"):  # the allowlist was scoped to the import
        torch.load(path, weights_only=True)
    # structure read from the weights (hidden_dim 999 loses to them), heads from the caller
    assert (model.config.hidden_dim, model.config.ffn_dim, model.config.num_heads) == (32, 48, 4)
    assert (model.config.num_encoder_layers, model.config.num_decoder_layers) == (2, 2)
    assert report.epoch == 10 and report.ignored_keys == ["backbone.conv_stem.weight"]
    assert report.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    levels = levels_for(UNIAD_SPEC)
    feat = authors_neck(levels, [4, 8, 16], 16)
    (target,) = model.targets(levels)
    assert torch.allclose(target, feat, atol=1e-5)
    rec, pred = authors_uniad(sd, feat, heads=4, window=7, stride=16)
    with torch.no_grad():
        (ours,) = model.reconstruct([target])
        scores = model.score(levels)
    assert torch.allclose(ours, rec, atol=ATOL)
    assert torch.allclose(scores.maps, pred, atol=ATOL)


def test_uniad_sine_positions_and_bare_state_dict(tmp_path: Path) -> None:
    sd = uniad_state(24, 8, 8, d=32, ffn=48, enc=1, dec=1)
    del sd["pos_embed.row_embed.weight"], sd["pos_embed.col_embed.weight"]
    path = tmp_path / "bare.pth"
    torch.save(sd, path)  # a bare state_dict of the reconstruction module
    model, _ = import_authors_checkpoint("uniad", path, UNIAD_SPEC, {"num_heads": 4})
    assert model.config.position_embedding == "sine"
    assert model.net.pos_embed is None


# ----------------------------------------------------------------------------------- CRAD

CRAD_SPEC = FeatureSpec((2, 3), (6, 10), ((8, 8), (4, 4)), 64)


def test_crad_import_reproduces_the_authors_network(tmp_path: Path, fake_easydict) -> None:
    sd = crad_state(16, 8, 8, blocks=2, exp=24)
    path = tmp_path / "ckpt_best.pth.tar"
    save_like_model_helper(path, sd, fake_easydict)
    model, _ = import_authors_checkpoint("crad", path, CRAD_SPEC, {"expansion": 864})
    assert (model.config.num_blocks, model.config.expansion) == (2, 24)  # from the weights
    levels = levels_for(CRAD_SPEC)
    feat = authors_neck(levels, [8, 16], 8)
    (target,) = model.targets(levels)
    assert torch.allclose(target, feat, atol=1e-5)
    raw, refined, pred = authors_crad(sd, feat)
    with torch.no_grad():
        assert torch.allclose(model.raw_reconstruction(target), raw, atol=ATOL)
        assert torch.allclose(model.reconstruct([target])[0], refined, atol=ATOL)
        assert torch.allclose(model.score(levels).maps, pred, atol=ATOL)
    bn = model.net.fusion[1].project_norm
    assert torch.equal(bn.running_var, sd["layer.1.conv.8.running_var"])


# ------------------------------------------------------------------------------------ RLR

RLR_SPEC = FeatureSpec((2, 3), (12, 20), ((16, 16), (8, 8)), 64)


def save_rlr(path: Path, layers: int = 2) -> list[dict]:
    states = [
        rlr_level_state(c, h * w, d, layers, seed=20 + i)
        for i, (c, (h, w), d) in enumerate(
            zip(RLR_SPEC.channels, RLR_SPEC.shapes, (32, 64), strict=True)
        )
    ]
    torch.save({"state_dict": [OrderedDict(s) for s in states], "epoch": 199,
                "best_img_auc": np.float64(0.98), "best_img_aucs": [np.float64(0.9)],
                "best_pix_aucs": np.array([0.5, 0.6])}, path)
    return states


def test_rlr_import_reproduces_the_authors_network(tmp_path: Path) -> None:
    path = tmp_path / "latest.pth"
    states = save_rlr(path)
    model, report = import_authors_checkpoint("rlr", path, RLR_SPEC)
    assert report.epoch == 200  # they store the 0-based index of the last epoch
    assert model.config.hidden_dims == [32, 64] and model.config.num_layers == 2
    levels = levels_for(RLR_SPEC)
    with torch.no_grad():
        recs = model.reconstruct(model.targets(levels))
    for i, (sd, level, rec) in enumerate(zip(states, levels, recs, strict=True)):
        h, w = RLR_SPEC.shapes[i]
        tokens = level.flatten(2).transpose(1, 2)
        expected = authors_rlr_level(sd, tokens, h, w, model.levels[i].window)
        assert torch.allclose(rec.flatten(2).transpose(1, 2), expected, atol=ATOL)
    # the authors' positional table is what makes the difference: the normalised (DETR) table
    # on the same weights gives another reconstruction
    assert model.config.position_embedding == "integer"
    other_cfg = model.config.model_copy(update={"position_embedding": "normalised"})
    plain = RLR(RLR_SPEC, other_cfg).eval()
    plain.load_state_dict(model.state_dict())
    with torch.no_grad():
        other = plain.reconstruct(levels)
    assert not torch.allclose(other[0], recs[0], atol=1e-3)


# --------------------------------------------------------------------------- refusals, errors


class Opaque:
    """An arbitrary object: must never be unpickled."""

    def __init__(self) -> None:
        self.payload = 1


def test_arbitrary_objects_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": uniad_state(24, 8, 8, 32, 48, 1, 1), "extra": Opaque()}, path)
    with pytest.raises(CheckpointError, match=r"evil\.pth: refused.*Opaque"):
        import_authors_checkpoint("uniad", path, UNIAD_SPEC, {"num_heads": 4})


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "no such checkpoint file"),
        (b"definitely not a zip or pickle", "not a readable torch checkpoint"),
        (b"hello\n", r"not a readable torch checkpoint \(KeyError"),
        (bytes(range(7, 107)), "not a readable torch checkpoint"),
        ("zip", "not a readable torch checkpoint"),
    ],
)
def test_unreadable_files(tmp_path: Path, content: bytes | str | None, message: str) -> None:
    path = tmp_path / "broken.pth"
    if content == "zip":  # a zip file without torch's records
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("archive/data.pkl", b"junk")
    elif content is not None:
        path.write_bytes(content)
    with pytest.raises(CheckpointError, match=f"broken.pth: {message}"):
        import_authors_checkpoint("crad", path, CRAD_SPEC)


def _save(tmp_path: Path, obj) -> Path:
    path = tmp_path / "ckpt.pth"
    torch.save(obj, path)
    return path


def test_malformed_and_unsupported_state_dicts(tmp_path: Path) -> None:
    good = uniad_state(24, 8, 8, 32, 48, 1, 1)
    opts = {"num_heads": 4}
    bad = dict(good, note="text")
    with pytest.raises(CheckpointError, match="'note' is a str, not a tensor"):
        import_authors_checkpoint("uniad", _save(tmp_path, {"state_dict": bad}), UNIAD_SPEC, opts)
    prenorm = dict(good, **{"transformer.encoder.norm.weight": torch.ones(32)})
    with pytest.raises(CheckpointError, match="pre-norm"):
        import_authors_checkpoint("uniad", _save(tmp_path, prenorm), UNIAD_SPEC, opts)
    odd = dict(good, **{"something.else": torch.ones(1)})
    with pytest.raises(CheckpointError, match="unexpected key 'something.else'"):
        import_authors_checkpoint("uniad", _save(tmp_path, odd), UNIAD_SPEC, opts)
    other = FeatureSpec((1, 2, 3), (6, 8, 12), UNIAD_SPEC.shapes, 128)  # 26 channels, not 24
    with pytest.raises(CheckpointError, match=r"input_proj\.weight has shape \(32, 24\)"):
        import_authors_checkpoint("uniad", _save(tmp_path, good), other, opts)
    basic = dict(crad_state(16, 8, 8, 1, 8), **{"layer.0.0.conv1.weight": torch.ones(1)})
    with pytest.raises(CheckpointError, match="BasicBlock"):
        import_authors_checkpoint("crad", _save(tmp_path, basic), CRAD_SPEC)
    with pytest.raises(ConfigError, match="authors' checkpoints"):
        import_authors_checkpoint("patchcore", _save(tmp_path, good), UNIAD_SPEC)


def test_rlr_variants_and_level_count(tmp_path: Path) -> None:
    path = tmp_path / "rlr.pth"
    states = save_rlr(path, layers=1)
    one_level = _save(tmp_path, {"state_dict": [states[0]]})
    with pytest.raises(CheckpointError, match=r"1 level model\(s\), but the backbone gives 2"):
        import_authors_checkpoint("rlr", one_level, RLR_SPEC)
    extra = dict(states[0])
    extra["encoder.encode_layers.0.sa.in_proj_weight"] = torch.ones(96, 32)
    with pytest.raises(CheckpointError, match="mca/nsa"):
        import_authors_checkpoint("rlr", _save(tmp_path, [extra, states[1]]), RLR_SPEC)


# ------------------------------------------------------------------------- refad run folders


def lite_config(method: str, *extra: str):
    return apply_overrides(preset(method), [
        "backbone.name=tf_efficientnet_lite2", "backbone.weights=none", "data.image_size=64",
        "backbone.levels=[2, 3]", "device=cpu", *extra,
    ])


def test_uniad_run_folder_opens_with_the_same_model(tmp_path: Path, fake_easydict) -> None:
    config = lite_config("uniad", "model.num_heads=4", "model.neighbour_window=3")
    sd = uniad_state(48 + 120, 4, 4, d=32, ffn=48, enc=1, dec=1)
    path = tmp_path / "ckpt.pth.tar"
    save_like_model_helper(path, sd, fake_easydict)
    run_dir = import_run("uniad", path, tmp_path / "run", config)
    run = open_run(run_dir, "cpu")
    model, meta = run.model("unified")
    assert meta.method == "uniad" and meta.epoch == 10 and meta.calibration is None
    assert run.config.model.num_heads == 4 and run.config.model.hidden_dim == 32
    imported = json.loads((run_dir / "imported.json").read_text())
    assert imported["source"] == str(path) and imported["method"] == "uniad"
    levels = run.extractor(torch.rand(2, 3, 64, 64))
    feat = authors_neck(levels, [8, 16], 16)
    rec, _ = authors_uniad(sd, feat, heads=4, window=3, stride=16)
    with torch.no_grad():
        assert torch.allclose(model.reconstruct(model.targets(levels))[0], rec, atol=ATOL)
    with pytest.raises(ConfigError, match="already holds a run"):
        import_run("uniad", path, run_dir, config)


def test_crad_run_folder_takes_the_structure_from_the_weights(tmp_path: Path) -> None:
    config = lite_config("crad")  # preset says expansion 864; the file says 24
    sd = crad_state(48 + 120, 8, 8, blocks=1, exp=24)
    path = _save(tmp_path, {"state_dict": sd})
    run_dir = import_run("crad", path, tmp_path / "run", config)
    model, _ = open_run(run_dir, "cpu").model("unified")
    assert model.config.expansion == 24
    levels = [torch.rand(1, 48, 8, 8), torch.rand(1, 120, 4, 4)]
    _, refined, _ = authors_crad(sd, authors_neck(levels, [8, 16], 8))
    with torch.no_grad():
        assert torch.allclose(model.reconstruct(model.targets(levels))[0], refined, atol=ATOL)


def test_run_folder_checks_the_backbone(tmp_path: Path) -> None:
    from refad.backbones import build_extractor

    config = lite_config("crad")
    model, _ = import_authors_checkpoint(
        "crad", _save(tmp_path, crad_state(16, 8, 8, 1, 8)), CRAD_SPEC
    )
    with pytest.raises(ConfigError, match="channels"):
        write_imported_run(model, tmp_path / "run", config, build_extractor(config.backbone, "cpu"))
    assert not (tmp_path / "run").exists()


def test_imported_rlr_run_folder_reloads_identically(tmp_path: Path) -> None:
    # the authors' positional table is RLR's default, so an imported run reloads exactly
    path = tmp_path / "latest.pth"
    config = lite_config("rlr", "backbone.aggregate_kernel=3")
    from refad.backbones import build_extractor

    extractor = build_extractor(config.backbone, "cpu")
    spec = FeatureSpec((2, 3), tuple(extractor.channels),
                       tuple(extractor.output_shapes(64)), 64)
    torch.save({"state_dict": [
        rlr_level_state(c, h * w, d, 1, seed=30 + i)
        for i, (c, (h, w), d) in enumerate(
            zip(spec.channels, spec.shapes, (32, 64), strict=True)
        )
    ]}, path)
    run_dir = import_run("rlr", path, tmp_path / "run", config)
    model, _ = open_run(run_dir, "cpu").model("unified")
    imported, _ = import_authors_checkpoint("rlr", path, spec)
    levels = levels_for(spec)
    with torch.no_grad():
        assert torch.allclose(model.reconstruct(levels)[0], imported.reconstruct(levels)[0])
    # an imported run has no optimiser state: resuming it said "names no optimizer file"
    from refad.errors import ConfigError
    from refad.training import fit

    with pytest.raises(ConfigError, match="an imported checkpoint .* no optimiser state"):
        fit(config, run_dir, resume=True, progress=False)


def test_cli_refuses_a_wrong_file_before_fetching_any_backbone(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from refad.cli.main import app

    bad = tmp_path / "notes.pth"
    bad.write_text("hello\n")
    # the default backbone's weights are not on this machine: reading them first would fail
    # on the network (or take minutes), not on the file
    result = CliRunner().invoke(app, ["import-authors", "--method", "rlr", "--checkpoint",
                                      str(bad), "--out", str(tmp_path / "run")])
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert result.exit_code == 2 and len(lines) == 1, result.output
    assert f"{bad}: not a readable torch checkpoint" in lines[0]
    assert not (tmp_path / "run").exists()
    import pickle
    import subprocess
    import sys

    with open(bad, "wb") as fh:  # a plain pickle: torch warned on stderr besides the error
        pickle.dump({"state_dict": {"a": [1, 2]}}, fh)
    # a real process: pytest would capture the warning that a user's terminal shows
    done = subprocess.run([sys.executable, "-m", "refad", "import-authors", "--method", "rlr",
                           "--checkpoint", str(bad), "--out", str(tmp_path / "run")],
                          capture_output=True, text=True, timeout=120)
    lines = [ln for ln in done.stderr.splitlines() if ln.strip()]
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert f"{bad}: not a readable torch checkpoint" in lines[0]


def test_a_file_of_another_method_is_named_as_such(tmp_path: Path) -> None:
    """Read as the wrong method, a file failed on a missing key or a level count ("1 level
    model(s), but the backbone gives 2"), which pointed at levels and config, not --method."""
    files = {"uniad": _save(tmp_path, {"state_dict": uniad_state(24, 8, 8, 32, 48, 1, 1)})}
    files["crad"] = tmp_path / "crad.pth"
    torch.save({"state_dict": crad_state(16, 8, 8, 1, 8)}, files["crad"])
    files["rlr"] = tmp_path / "rlr.pth"
    save_rlr(files["rlr"])
    specs = {"uniad": UNIAD_SPEC, "crad": CRAD_SPEC, "rlr": RLR_SPEC}
    for kind, path in files.items():
        for method, spec in specs.items():
            if method == kind:
                continue
            with pytest.raises(CheckpointError, match=f"an authors' {kind} checkpoint, not "
                                                      f"{method} \\(import it as method {kind}"):
                import_authors_checkpoint(method, path, spec, {"num_heads": 4})
    from typer.testing import CliRunner

    from refad.cli.main import app

    # the CLI says so before it builds the backbone (the default one is not on this machine)
    result = CliRunner().invoke(app, ["import-authors", "--method", "rlr", "--checkpoint",
                                      str(files["crad"]), "--out", str(tmp_path / "run")])
    assert result.exit_code == 2, result.output
    assert "an authors' crad checkpoint, not rlr" in result.output


def test_an_imported_run_is_not_called_unfinished(tmp_path: Path, demo_root: Path) -> None:
    """Its manifest took refad's schedule as the total (epoch 0 of 50), so `refad test` noted a
    training that stopped early and advised a resume, which imported runs refuse."""
    from refad.api import evaluate

    config = lite_config("crad", f"data.root={demo_root}")
    path = _save(tmp_path, {"state_dict": crad_state(48 + 120, 8, 8, blocks=1, exp=24)})
    run_dir = import_run("crad", path, tmp_path / "run", config)
    meta = json.loads((run_dir / "checkpoint.json").read_text())
    assert meta["epoch"] == meta["epochs"]
    notes = " ".join(evaluate(run_dir, "cpu", progress=False)["notes"])
    assert "stopped" not in notes and "--resume" not in notes, notes
    meta["epochs"] = 50  # a run imported before this fix
    (run_dir / "checkpoint.json").write_text(json.dumps(meta))
    notes = " ".join(evaluate(run_dir, "cpu", progress=False)["notes"])
    assert "stopped" not in notes and "--resume" not in notes, notes


def test_an_interrupted_import_leaves_no_run_and_can_be_run_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Ctrl-C after config.json left a folder holding only it: `refad test` said 'no
    checkpoint here (train first)' and the same import was refused ('already holds a run')."""
    from refad.runs import imported

    config = lite_config("crad")
    path = _save(tmp_path, {"state_dict": crad_state(48 + 120, 8, 8, blocks=1, exp=24)})
    real = imported.write_json

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(imported, "write_json", stopped)
    with pytest.raises(KeyboardInterrupt):
        import_run("crad", path, tmp_path / "run", config)
    left = sorted(p.name for p in (tmp_path / "run").iterdir()) if (
        tmp_path / "run").exists() else []
    assert [name for name in left if name != ".refad.lock"] == []
    monkeypatch.setattr(imported, "write_json", real)
    run_dir = import_run("crad", path, tmp_path / "run", config)
    assert (run_dir / "config.json").is_file() and (run_dir / "imported.json").is_file()


def test_an_import_holds_the_folder_lock(tmp_path: Path) -> None:
    """A second import into the same --out ran alongside the first (no lock), and the first
    then failed on a temporary removed under it."""
    from refad.runs import RunDir

    config = lite_config("crad")
    path = _save(tmp_path, {"state_dict": crad_state(48 + 120, 8, 8, blocks=1, exp=24)})
    with RunDir(tmp_path / "run").lock("train"), pytest.raises(
            RefadError, match="in use by another refad process"):
        import_run("crad", path, tmp_path / "run", config)

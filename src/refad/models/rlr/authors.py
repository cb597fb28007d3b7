"""The authors' checkpoint format of RLR: key rules, the variants refad refuses and the
structure read from the weights; registered in `config.py` (`authors=`).

Source (read for its structure and key names): hlr7999/RLR, whose `trainer.py` saves
{"state_dict": [one state dict per level], ...}.
"""

from __future__ import annotations

from typing import Any

import torch

from refad.errors import CheckpointError
from refad.models.authors import AuthorsFormat, Rule, StateDict, indices, need


def _squeeze_last(t: torch.Tensor) -> torch.Tensor:
    return t.squeeze(-1)  # Conv1d(k=1) weight (out, in, 1) -> Linear weight (out, in)


RLR_RULES: tuple[Rule, ...] = (
    Rule(r"embedding\.project_embedding\.project\.weight", "input_embed.proj.weight",
         transform=_squeeze_last),
    Rule(r"embedding\.project_embedding\.project\.bias", "input_embed.proj.bias"),
    Rule(r"ref_mca", "reference", transform=lambda t: t.reshape(t.shape[-2], t.shape[-1])),
    Rule(r"ref_mca_embedding\.project_embedding\.project\.weight",
         "reference_embed.proj.weight", transform=_squeeze_last),
    Rule(r"ref_mca_embedding\.project_embedding\.project\.bias", "reference_embed.proj.bias"),
    Rule(r"encoder\.encode_layers\.(\d+)\.mca\.in_proj_(weight|bias)",
         r"layers.\1.lca.{}_proj.\2", qkv=True),
    Rule(r"encoder\.encode_layers\.(\d+)\.mca\.out_proj\.(weight|bias)",
         r"layers.\1.lca.out_proj.\2"),
    Rule(r"encoder\.encode_layers\.(\d+)\.nsa\.in_proj_(weight|bias)",
         r"layers.\1.mlka.{}_proj.\2", qkv=True),
    Rule(r"encoder\.encode_layers\.(\d+)\.nsa\.out_proj\.(weight|bias)",
         r"layers.\1.mlka.out_proj.\2"),
    Rule(r"encoder\.encode_layers\.(\d+)\.(norm1|norm2)\.(weight|bias)", r"layers.\1.\2.\3"),
    Rule(r"encoder\.encode_layers\.(\d+)\.ffn\.fc1\.(weight|bias)", r"layers.\1.ffn.0.\2"),
    Rule(r"encoder\.encode_layers\.(\d+)\.ffn\.fc2\.(weight|bias)", r"layers.\1.ffn.2.\2"),
    Rule(r"encoder\.norm\.(weight|bias)", r"out_norm.\1"),
    Rule(r"projection\.(weight|bias)", r"out_proj.\1"),
)


def infer(levels: list[StateDict], where: str) -> dict[str, Any]:
    first = levels[0]
    layers = indices(first, r"encoder\.encode_layers\.(\d+)\..*")
    if not layers:
        raise CheckpointError(f"{where}: no encoder layers found (not an RLR checkpoint?)")
    has = {b: any(f".{b}." in k for k in first) for b in ("mca", "nsa")}
    kind = "rlr" if has["mca"] and has["nsa"] else "mlka" if has["nsa"] else None
    if kind is None:
        raise CheckpointError(f"{where}: only the mca+nsa (RLR) and nsa-only variants import")
    dims = [
        int(need(sd, "embedding.project_embedding.project.weight", where).shape[0])
        for sd in levels
    ]
    fc1 = need(first, f"encoder.encode_layers.{layers[0]}.ffn.fc1.weight", where)
    return {
        "num_layers": len(layers),
        "hidden_dims": dims,
        "num_heads": 8,
        "ffn_ratio": int(fc1.shape[0]) // dims[0],
        "alpha": 2.0,
        "attention": kind,
        "residual": False,
    }


FORMAT = AuthorsFormat(
    rules=RLR_RULES,
    unsupported=(
        (r".*\.(ca|msa|sa)\..*", "attention blocks other than mca/nsa (ablation variants)"),
        (r"encoder\.gate.*", "gated blocks (--blocks_gate gate|net)"),
        (r".*\.norm0\..*", "serial block mode"),
    ),
    infer=infer,
    per_level=True,
    epoch_is_index=True,  # RLR stores the 0-based index of the last finished epoch
    fixed={"position_embedding": "integer"},  # their sine table (integer positions)
)

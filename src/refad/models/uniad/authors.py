"""The authors' checkpoint format of UniAD: key rules, the variants refad refuses and the
structure read from the weights; registered in `config.py` (`authors=`).

Source (read for its structure and key names): zhiyuanyou/UniAD, whose
`tools/train_val.py` saves {"state_dict": the DDP state dict, ...}.
"""

from __future__ import annotations

from typing import Any

from refad.errors import CheckpointError
from refad.models.authors import AuthorsFormat, Rule, StateDict, indices, need

_ENC = r"transformer\.encoder\.layers\.(\d+)\."
_DEC = r"transformer\.decoder\.layers\.(\d+)\."
_WB = r"(weight|bias)"
_UNIAD_ATTN = {"self_attn": "memory_attn", "multihead_attn": "previous_attn"}
UNIAD_RULES: tuple[Rule, ...] = (
    Rule(rf"input_proj\.{_WB}", r"net.input_proj.\1"),
    Rule(rf"output_proj\.{_WB}", r"net.output_proj.\1"),
    Rule(r"pos_embed\.row_embed\.weight", "net.pos_embed.rows"),
    Rule(r"pos_embed\.col_embed\.weight", "net.pos_embed.cols"),
    Rule(rf"{_ENC}self_attn\.in_proj_{_WB}", r"net.encoder.\1.attn.{}_proj.\2", qkv=True),
    Rule(rf"{_ENC}self_attn\.out_proj\.{_WB}", r"net.encoder.\1.attn.out_proj.\2"),
    Rule(rf"{_ENC}linear1\.{_WB}", r"net.encoder.\1.ffn.0.\2"),
    Rule(rf"{_ENC}linear2\.{_WB}", r"net.encoder.\1.ffn.3.\2"),
    Rule(rf"{_ENC}(norm1|norm2)\.{_WB}", r"net.encoder.\1.\2.\3"),
    Rule(rf"{_DEC}learned_embed\.weight", r"net.decoder.\1.queries"),
    *(
        rule
        for theirs, ours in _UNIAD_ATTN.items()
        for rule in (
            Rule(rf"{_DEC}{theirs}\.in_proj_{_WB}", rf"net.decoder.\1.{ours}.{{}}_proj.\2",
                 qkv=True),
            Rule(rf"{_DEC}{theirs}\.out_proj\.{_WB}", rf"net.decoder.\1.{ours}.out_proj.\2"),
        )
    ),
    Rule(rf"{_DEC}linear1\.{_WB}", r"net.decoder.\1.ffn.0.\2"),
    Rule(rf"{_DEC}linear2\.{_WB}", r"net.decoder.\1.ffn.3.\2"),
    Rule(rf"{_DEC}(norm1|norm2|norm3)\.{_WB}", r"net.decoder.\1.\2.\3"),
    Rule(rf"transformer\.decoder\.norm\.{_WB}", r"net.decoder_norm.\1"),
)


def infer(states: list[StateDict], where: str) -> dict[str, Any]:
    state = states[0]
    proj = need(state, "input_proj.weight", where)
    enc = indices(state, r"transformer\.encoder\.layers\.(\d+)\..*")
    dec = indices(state, r"transformer\.decoder\.layers\.(\d+)\..*")
    if not dec:
        raise CheckpointError(f"{where}: no decoder layers found (not a UniAD checkpoint?)")
    ffn = need(state, f"transformer.decoder.layers.{dec[0]}.linear1.weight", where)
    return {
        "hidden_dim": int(proj.shape[0]),
        "num_encoder_layers": len(enc),
        "num_decoder_layers": len(dec),
        "ffn_dim": int(ffn.shape[0]),
        "position_embedding": "learned" if "pos_embed.row_embed.weight" in state else "sine",
    }


FORMAT = AuthorsFormat(
    rules=UNIAD_RULES,
    unsupported=(
        (r"transformer\.encoder\.norm\..*", "pre-norm transformer (normalize_before)"),
    ),
    infer=infer,
)

"""The authors' checkpoint format of CRAD: key rules, the variants refad refuses and the
structure read from the weights; registered in `config.py` (`authors=`).

Source (read for its structure and key names): tae-mo/CRAD: the same saver as UniAD.
"""

from __future__ import annotations

from typing import Any

from refad.models.authors import AuthorsFormat, Rule, StateDict, indices, need

_BN = r"(weight|bias|running_mean|running_var|num_batches_tracked)"
CRAD_RULES: tuple[Rule, ...] = (
    Rule(r"query\.0", "net.local_grid"),
    Rule(r"query\.1", "net.global_grid"),
    Rule(r"coord\.(0|2)\.(weight|bias)", r"net.local_coords.\1.\2"),
    Rule(r"coord_\.(0|2)\.(weight|bias)", r"net.global_coords.\1.\2"),
    Rule(r"layer\.(\d+)\.conv\.0\.weight", r"net.fusion.\1.expand.weight"),
    Rule(rf"layer\.(\d+)\.conv\.1\.{_BN}", r"net.fusion.\1.expand_norm.\2"),
    Rule(r"layer\.(\d+)\.conv\.3\.weight", r"net.fusion.\1.depthwise.weight"),
    Rule(rf"layer\.(\d+)\.conv\.4\.{_BN}", r"net.fusion.\1.depthwise_norm.\2"),
    Rule(r"layer\.(\d+)\.conv\.5\.fc\.0\.weight", r"net.fusion.\1.se.reduce.weight"),
    Rule(r"layer\.(\d+)\.conv\.5\.fc\.2\.weight", r"net.fusion.\1.se.expand.weight"),
    Rule(r"layer\.(\d+)\.conv\.7\.weight", r"net.fusion.\1.project.weight"),
    Rule(rf"layer\.(\d+)\.conv\.8\.{_BN}", r"net.fusion.\1.project_norm.\2"),
    Rule(r"recover\.weight", "net.recover.weight"),
)


def infer(states: list[StateDict], where: str) -> dict[str, Any]:
    state = states[0]
    local = need(state, "query.0", where)
    glob = need(state, "query.1", where)
    blocks = indices(state, r"layer\.(\d+)\.conv\..*")
    cfg: dict[str, Any] = {
        "local_grid": int(local.shape[-1]),
        "global_grid": int(glob.shape[-1]),
        "num_blocks": len(blocks),
    }
    if blocks:
        expand = need(state, f"layer.{blocks[0]}.conv.0.weight", where)
        reduce = need(state, f"layer.{blocks[0]}.conv.5.fc.0.weight", where)
        cfg["expansion"] = int(expand.shape[0])
        cfg["se_reduction"] = int(expand.shape[0]) // int(reduce.shape[0])
    return cfg


FORMAT = AuthorsFormat(
    rules=CRAD_RULES,
    unsupported=(
        (r"layer\.\d+\.\d+\.conv1\..*", "the earlier BasicBlock fusion ('GRAD')"),
    ),
    infer=infer,
)

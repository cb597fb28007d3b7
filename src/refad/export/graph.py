"""One traceable module per unit (normalised images -> anomaly map, image score) and its ONNX.

Export-time attention. `F.scaled_dot_product_attention` is swapped, during tracing only, for
the plain matmul-(add mask)-softmax-matmul pattern that runtimes recognise: OpenVINO fuses it
into its own attention kernel, which anything between the mask and the softmax prevents
(benchmarks/deploy.md). Masked softmaxes pass through denormal numbers, which onnxruntime's
softmax runs far slower; `refad.deploy`'s onnxruntime sessions therefore flush denormals to
zero (`session.set_denormal_as_zero`), and the metadata records that hint for other hosts.
The PyTorch model keeps its own kernel; the parity check compares the graph with it.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from refad.backbones import Backbone
from refad.deploy.metadata import INPUT_NAME, OUTPUT_NAMES
from refad.errors import RefadError
from refad.models.base import AnomalyModel
from refad.pipeline.preprocess import as_hw

OPSET = 18
EXPORTERS = ("auto", "torchscript", "dynamo")


class ScoringGraph(nn.Module):
    """extractor + model.score as one module: (B, 3, S, S) -> ((B, S, S) maps, (B,) scores)."""

    def __init__(self, extractor: Backbone, model: AnomalyModel) -> None:
        super().__init__()
        self.extractor = extractor
        self.model = model

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        scores = self.model.score(self.extractor(image))
        return scores.maps, scores.image


def export_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
) -> torch.Tensor:
    """Scaled dot-product attention in plain ops, in the pattern runtimes fuse (module doc)."""
    if is_causal or enable_gqa or dropout_p > 0.0:
        raise RefadError("export: causal, grouped or dropout attention is not exportable")
    scale = query.shape[-1] ** -0.5 if scale is None else scale
    logits = torch.matmul(query * scale, key.transpose(-2, -1))
    if attn_mask is None:
        return torch.matmul(torch.softmax(logits, dim=-1), value)
    if attn_mask.dtype == torch.bool:
        allowed = attn_mask
        logits = logits.masked_fill(~attn_mask, float("-inf"))
    else:
        allowed = attn_mask > float("-inf")
        logits = logits + attn_mask
    out = torch.matmul(torch.softmax(logits, dim=-1), value)
    # A query that may attend to no key (RLR's masked neighbourhood covers a whole small
    # feature map) gets zeros from the kernel and NaN from a plain softmax. Mended after the
    # last matmul, so the fusable pattern stays whole; the mask is a constant, so is this test.
    return torch.where(allowed.any(dim=-1, keepdim=True), out, torch.zeros((), dtype=out.dtype))


@contextlib.contextmanager
def _export_kernels() -> Iterator[None]:
    """Swap the attention kernel for tracing, restoring it whatever happens."""
    original = F.scaled_dot_product_attention
    F.scaled_dot_product_attention = export_attention
    try:
        yield
    finally:
        F.scaled_dot_product_attention = original


def _torchscript(graph: ScoringGraph, example: torch.Tensor, path: Path) -> None:
    axes = {INPUT_NAME: {0: "batch"}, OUTPUT_NAMES[0]: {0: "batch"}, OUTPUT_NAMES[1]: {0: "batch"}}
    torch.onnx.export(
        graph, (example,), str(path), dynamo=False, opset_version=OPSET,
        input_names=[INPUT_NAME], output_names=list(OUTPUT_NAMES), dynamic_axes=axes,
    )


def _dynamo(graph: ScoringGraph, example: torch.Tensor, path: Path) -> None:
    batch = torch.export.Dim("batch", min=1, max=4096)
    program = torch.onnx.export(
        graph, (example,), None, dynamo=True, opset_version=OPSET,
        input_names=[INPUT_NAME], output_names=list(OUTPUT_NAMES),
        dynamic_shapes={"image": {0: batch}}, verbose=False,
    )
    program.save(str(path))


def export_onnx(
    graph: ScoringGraph, size: int | tuple[int, int], path: Path, exporter: str = "auto"
) -> str:
    """Write the ONNX graph (opset 18, dynamic batch); returns the exporter that succeeded.

    "auto" tries the TorchScript exporter first (10x faster to run here and exact for all three
    methods), then the dynamo one, which is what remains when TorchScript export goes away.
    A failure to write the file (a full disk) is an OSError naming `path`, not retried with the
    other exporter; the caller names the file as its user will find it.
    """
    if exporter not in EXPORTERS:
        raise RefadError(f"exporter: {exporter!r} is not one of {', '.join(EXPORTERS)}")
    order = ("torchscript", "dynamo") if exporter == "auto" else (exporter,)
    example = torch.zeros(2, 3, *as_hw(size))  # (height, width); an integer: square
    failures = []
    for name in order:
        try:
            with _export_kernels(), torch.no_grad(), warnings.catch_warnings(), \
                    contextlib.redirect_stdout(io.StringIO()):
                warnings.simplefilter("ignore")
                (_torchscript if name == "torchscript" else _dynamo)(graph, example, path)
            return name
        except RefadError:
            raise
        except OSError as exc:  # the file, not the exporter: another exporter would fail alike
            path.unlink(missing_ok=True)  # named here; the caller knows the name its user sees
            raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from None
        except Exception as exc:  # exporters raise many types; the last one is reported
            failures.append(f"{name}: {type(exc).__name__}: {' '.join(str(exc).split())[:160]}")
            path.unlink(missing_ok=True)
    raise RefadError(f"export: the ONNX exporter failed ({'; '.join(failures)})")

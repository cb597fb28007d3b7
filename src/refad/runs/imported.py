"""An authors' checkpoint as a refad run folder (`refad import-authors`).

`refad.models.authors` turns the authors' weights into a refad model; this writes that model
the way a trained run is written (config.json + a unified checkpoint + imported.json), after
checking that the saved config alone rebuilds the same network.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import torch

from refad.atomic import write_json
from refad.backbones import Backbone, build_extractor
from refad.config import RunConfig
from refad.device import resolve_device
from refad.errors import CheckpointError, ConfigError
from refad.models.authors import (
    ImportReport,
    check_method_of,
    import_authors_checkpoint,
    load_authors_file,
)
from refad.models.base import FeatureSpec, ReconstructionModel
from refad.models.registry import build_model
from refad.pipeline.preprocess import size_value
from refad.runs.checkpoint import CheckpointMeta, backbone_identity, spec_to_dict
from refad.runs.layout import IMPORTED_FILE, UNIFIED
from refad.runs.rundir import RunDir


def _probe(spec: FeatureSpec, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [
        torch.randn(2, c, h, w, generator=g).abs()
        for c, (h, w) in zip(spec.channels, spec.shapes, strict=True)
    ]


def check_reload(model: ReconstructionModel, where: str) -> None:
    """Rebuild the model from its method and config alone, load its weights and compare.

    This is exactly what opening the written run will do; any state the config cannot
    express (e.g. a positional table held only in a buffer) shows up as a difference here.
    """
    cfg = model.config.model_dump()
    fresh = build_model(model.method, model.spec, cfg)
    fresh.load_state_dict({k: v.detach().cpu() for k, v in model.state_dict().items()})
    fresh.eval()
    param = next(model.parameters())
    probe = [x.to(param.device, param.dtype) for x in _probe(model.spec)]
    was_training = model.training
    model.eval()
    with torch.no_grad():
        a = model.reconstruct(model.targets(probe))
        b = fresh.to(param.device, param.dtype).reconstruct(fresh.targets(probe))
    model.train(was_training)
    for x, y in zip(a, b, strict=True):
        if not torch.allclose(x, y, rtol=1e-4, atol=1e-5):
            raise CheckpointError(
                f"{where}: refad's {model.method} config cannot reproduce this import after "
                "reloading (state outside the weights and config); not written"
            )


def write_imported_run(
    model: ReconstructionModel,
    run_dir: Path | str,
    config: RunConfig,
    extractor: Backbone,
    report: ImportReport | None = None,
) -> Path:
    """Write an imported model as a refad run folder (config.json + unified checkpoint).

    `config` is the RunConfig the run is opened with (its `model` section is replaced by the
    imported model's config); `extractor` is the matching backbone, whose identity is
    recorded like a trained run's. `imported.json` records the source file and its sha256.
    No calibration is written (no training images are seen); predictions then carry scores
    without a decision.
    """
    run_dir = Path(run_dir)
    folder = RunDir(run_dir)
    folder.check_new()
    if config.method != model.method:
        raise ConfigError(f"method: config says {config.method!r}, the model is {model.method!r}")
    if config.train.mode != "unified":
        raise ConfigError("train.mode: an imported checkpoint is one unified model")
    shapes = tuple(extractor.output_shapes(config.data.image_size))
    if (
        tuple(extractor.channels) != tuple(model.spec.channels)
        or shapes != tuple(model.spec.shapes)
        or config.data.hw != model.spec.image_size
    ):
        raise ConfigError(
            f"backbone: {extractor.name} gives channels {list(extractor.channels)} / shapes "
            f"{[list(s) for s in shapes]} at {config.data.image_size} px, the model was built for "
            f"{list(model.spec.channels)} / {[list(s) for s in model.spec.shapes]} at "
            f"{size_value(model.spec.image_size)} px"
        )
    check_reload(model, str(run_dir))
    config = config.model_copy(update={"model": model.config})
    epoch = report.epoch if report is not None and report.epoch is not None else 0
    meta = CheckpointMeta(
        method=model.method,
        epoch=epoch,
        epochs=epoch,  # the file is the model as the authors' training left it: refad's
        # own schedule does not apply, and no note may call the import unfinished
        spec=spec_to_dict(model.spec),
        backbone=backbone_identity(extractor, config.data.image_size, config.data.resize),
        model_config=model.config.model_dump(),
    )
    # config.json last: it makes the folder a run, so a Ctrl-C or a kill before it leaves no
    # run (it left config.json alone, a run the same command then refused to write over)
    try:
        folder.save_checkpoint(UNIFIED, model, meta)
        if report is not None:
            write_json(run_dir / IMPORTED_FILE, asdict(report))
        folder.write_config(config)
    except BaseException:
        folder.discard_unwritten_import()
        raise
    return run_dir


def import_run(
    method: str,
    checkpoint: Path | str,
    run_dir: Path | str,
    config: RunConfig,
    device: str | torch.device = "cpu",
) -> Path:
    """CLI entry: build the configured backbone, import the authors' file, write the run.
    The file is read first: a wrong one is refused before any backbone weights are fetched."""
    dev = resolve_device(device)
    folder = RunDir(Path(run_dir))
    folder.check_new()
    loaded = load_authors_file(checkpoint)
    check_method_of(loaded, method, str(checkpoint))
    extractor = build_extractor(config.backbone, dev)
    spec = FeatureSpec.of(extractor, config.data.hw)
    overrides = config.model.model_dump() if config.model.method == method else None
    model, report = import_authors_checkpoint(method, checkpoint, spec, overrides, loaded)
    with folder.lock("import"):  # a second import into it waits its turn or is refused
        return write_imported_run(model.to(dev), run_dir, config, extractor, report)

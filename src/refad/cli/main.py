"""The `refad` command: train, test, predict, demo.

Every user-facing failure (bad data, config, checkpoint, full disk) is printed as one line
`error: ...` on stderr with exit status 2; no traceback.
"""

from __future__ import annotations

import contextlib
import functools
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
import typer.core
from rich.console import Console
from rich.text import Text

try:  # typer >= 0.29 carries its own copy of click; its usage errors are raised from there
    from typer._click import exceptions as cli_errors
except ImportError:  # older typer runs on click itself
    from click import exceptions as cli_errors  # type: ignore[no-redef]

from refad.config.presets import PRESETS
from refad.errors import RefadError, require_at_least_one


class OneLineErrors(typer.core.TyperGroup):
    """Usage errors (unknown flag, a value of the wrong type, a missing option) as the same
    one line `error: ...` and exit status 2 as every other bad input, not a framed box."""

    def main(self, *args: Any, **kwargs: Any) -> Any:
        _escape_unprintable_names()
        try:
            code = super().main(*args, **{**kwargs, "standalone_mode": False})
        except cli_errors.NoArgsIsHelpError as exc:
            console.print(exc.ctx.get_help() if exc.ctx else "", highlight=False)
            sys.exit(0)
        except cli_errors.UsageError as exc:
            hint = f" (see `refad {exc.ctx.command.name} --help`)" if exc.ctx else ""
            print_error(f"{exc.format_message()}{hint}")
            sys.exit(2)
        except typer.Exit as exc:
            sys.exit(exc.exit_code)
        except typer.Abort:
            err_console.print(INTERRUPTED, soft_wrap=True)
            sys.exit(130)
        except cli_errors.ClickException as exc:
            print_error(exc.format_message())
            sys.exit(2)
        sys.exit(code if isinstance(code, int) else 0)  # without standalone mode, click
        # returns the status of a typer.Exit instead of exiting with it


def _escape_unprintable_names() -> None:
    """A file name that is not UTF-8 (held as lone surrogates) is printed escaped (`\\udcff`),
    not a UnicodeEncodeError after the work is done: the command owns its output streams."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(AttributeError, ValueError):
            stream.reconfigure(errors="backslashreplace")


app = typer.Typer(
    cls=OneLineErrors,
    help="Unified industrial anomaly detection (RLR, UniAD, CRAD) on one honest pipeline.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
# markup off: paths and messages are users' text, and `[v2]` or `[/]` in a folder name would be
# taken for style tags (dropped from the message, or a MarkupError after the work was done)
console = Console(markup=False)
err_console = Console(stderr=True, markup=False)


def print_error(message: str) -> None:
    """`error: <message>` on stderr, the message exactly as given."""
    err_console.print(Text.assemble(("error:", "bold red"), " ", message), highlight=False,
                      soft_wrap=True)


@app.callback()
def _setup() -> None:
    """Runs before every command: a SIGTERM (a service manager, a scheduler's time limit)
    stops the command like Ctrl-C."""
    signal.signal(signal.SIGTERM, _terminate)


def _torch_threads() -> None:
    """For the commands that run PyTorch: CPU threads follow the cores this process may use.
    Called by them, not for every command: the exported-model paths never import torch (1.5 s
    of start-up)."""
    from refad.device import set_cpu_threads

    set_cpu_threads()


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main() -> None:
    """The `refad` program (and `python -m refad`): the CLI, then an exit that a late Ctrl-C
    cannot turn into a failure."""
    try:
        app()
    finally:
        _ignore_late_signals()


def _ignore_late_signals() -> None:
    """Once the command is over (its files complete, its exit status decided), Ctrl-C and
    SIGTERM are ignored for the moments the interpreter takes to exit. Before, one in that
    window killed the process by the signal (status 130 or 143 with no message, or a
    KeyboardInterrupt traceback from an exit handler) after the work was done, and a script
    took the finished command for a failed one. Only the program does this: `app` run
    in-process (tests, notebooks) leaves the caller's handlers alone."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)


INTERRUPTED = (
    "interrupted; every file refad writes is complete or absent (a training keeps its last "
    "finished epoch: continue it with `refad train --out RUN --resume`)"
)


def user_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn RefadError into a one-line message and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except RefadError as exc:
            print_error(str(exc))
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            err_console.print(INTERRUPTED, soft_wrap=True)
            raise typer.Exit(130) from None
        except OSError as exc:
            # the last net for a path the checks did not foresee (a name longer than the file
            # system takes, a loop of links): the path and the system's reason, in one line
            if exc.filename is None:
                raise
            print_error(f"{exc.filename}: {exc.strerror or exc}")
            raise typer.Exit(2) from None
        except ModuleNotFoundError as exc:
            if exc.name is None or exc.name.split(".")[0] not in OPTIONAL_STACKS:
                raise
            extra = OPTIONAL_STACKS[exc.name.split(".")[0]]
            print_error(f"this needs {exc.name.split('.')[0]}, which is not installed "
                        f"(install it with: pip install 'refad[{extra}]')")
            raise typer.Exit(2) from None

    return wrapper


# Top-level module -> the extra that brings it (the base install is torch-free).
OPTIONAL_STACKS = {
    "torch": "torch", "torchvision": "torch", "timm": "torch", "safetensors": "torch",
    "skimage": "torch", "sklearn": "test", "onnx": "export", "onnxscript": "export",
    "nncf": "export", "onnxruntime": "deploy", "openvino": "deploy", "fastapi": "serve",
    "uvicorn": "serve", "multipart": "serve", "prometheus_client": "serve",
}


COMPILE_OPTION = typer.Option(
    "--compile",
    help="torch.compile the scoring path: none, default, reduce-overhead (CUDA graphs) or "
    "max-autotune; the same Scorer the speed benchmark measures.",
)


def _csv(text: str | None, flag: str) -> list[str] | None:
    """A comma-separated flag; given but naming nothing (`--categories ,`) is an error, not
    the default."""
    if text is None:
        return None
    items = [x.strip() for x in text.split(",") if x.strip()]
    if not items:
        raise RefadError(f"{flag}: expected comma-separated values, got {text!r}")
    return items


def _csv_ints(text: str | None, flag: str) -> list[int] | None:
    items = _csv(text, flag)
    try:
        return None if items is None else [int(x) for x in items]
    except ValueError:
        raise RefadError(f"{flag}: expected comma-separated integers, got {text!r}") from None


@app.command()
@user_errors
def train(
    out: Annotated[Path, typer.Option(help="Run folder to create (or resume).")],
    config_file: Annotated[
        Path | None,
        typer.Option(
            "--config",
            help="A config file (JSON or YAML, the schema of a run's config.json); flags and "
            "--set given as well apply on top of it.",
        ),
    ] = None,
    data: Annotated[
        str | None, typer.Option(help="Dataset layout: mvtec, visa, folder, mvtec_ad2 or "
                                 "real_iad.")
    ] = None,
    root: Annotated[Path | None, typer.Option(
        help="Dataset root (mvtec, visa, mvtec_ad2, real_iad).")] = None,
    categories: Annotated[str | None, typer.Option(help="Comma-separated; default all.")] = None,
    normal_dir: Annotated[Path | None, typer.Option(help="Folder layout: normal images.")] = None,
    anomalous_dir: Annotated[Path | None, typer.Option(help="Folder layout: test defects.")] = None,
    mask_dir: Annotated[Path | None, typer.Option(help="Folder layout: defect masks.")] = None,
    test_normal_dir: Annotated[
        Path | None, typer.Option(help="Folder layout: test normals.")
    ] = None,
    method: Annotated[
        str | None, typer.Option(help=f"{', '.join(PRESETS)} (presets).")
    ] = None,
    backbone: Annotated[str | None, typer.Option(help="timm model name.")] = None,
    levels: Annotated[str | None, typer.Option(help="timm out_indices, e.g. 2,3.")] = None,
    weights: Annotated[str | None, typer.Option(help="auto, none, or a .pth/.safetensors.")] = None,
    image_size: Annotated[int | None, typer.Option(help="Input size in pixels.")] = None,
    epochs: Annotated[int | None, typer.Option()] = None,
    batch_size: Annotated[int | None, typer.Option()] = None,
    lr: Annotated[float | None, typer.Option()] = None,
    seed: Annotated[int | None, typer.Option()] = None,
    per_category: Annotated[
        bool | None,
        typer.Option("--per-category/--no-per-category",
                     help="One model per category, or one for all (default: the config file's, "
                     "else unified)."),
    ] = None,
    feature_cache: Annotated[Path | None, typer.Option(help="Folder to cache features.")] = None,
    val_fraction: Annotated[float | None, typer.Option(help="Normal images held out.")] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu, cuda, cuda:N.")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="section.field=value")] = None,
    resume: Annotated[bool, typer.Option(help="Continue an interrupted run.")] = False,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
    amp: Annotated[bool, typer.Option(help="bf16 autocast on CUDA (ignored on the CPU).")] = False,
    compile_: Annotated[
        str | None,
        typer.Option(
            "--compile",
            help="torch.compile the training step: none, default, reduce-overhead (CUDA "
            "graphs: the fastest on a GPU) or max-autotune.",
        ),
    ] = None,
) -> None:
    """Train one model (unified: all categories) and save it to OUT."""
    _torch_threads()
    from refad.api import build_config, fit, load_config_file
    from refad.config.overrides import refuse_flags_set_again

    if resume:
        given = {
            "--config": config_file, "--data": data, "--root": root, "--categories": categories,
            "--normal-dir": normal_dir, "--anomalous-dir": anomalous_dir,
            "--mask-dir": mask_dir, "--test-normal-dir": test_normal_dir, "--method": method,
            "--backbone": backbone, "--levels": levels, "--weights": weights,
            "--image-size": image_size, "--epochs": epochs, "--batch-size": batch_size,
            "--lr": lr, "--seed": seed, "--per-category": per_category,
            "--feature-cache": feature_cache, "--val-fraction": val_fraction,
            "--set": set_ or None, "--amp": amp or None, "--compile": compile_,
        }
        ignored = [flag for flag, value in given.items() if value is not None]
        if ignored:
            raise RefadError(
                f"--resume: continues {out} with its saved config.json, so {', '.join(ignored)} "
                "would be ignored; drop them, or train a new run with --out elsewhere"
            )
        from refad.api import RunDir

        saved = RunDir(out).resume()
        results = fit(saved.model_copy(update={"device": device or saved.device}), out,
                      resume=True, progress=progress)
        _report_training(results, out)
        return

    base = load_config_file(config_file) if config_file is not None else None
    if base is not None and method is not None and method != base.method:
        raise RefadError(f"--method {method}: the config file's method is {base.method!r}")
    flags = {"train.amp": "--amp" if amp else None,
             "train.compile": "--compile" if compile_ is not None else None}
    refuse_flags_set_again({k: v for k, v in flags.items() if v}, set_ or ())
    config = build_config(
        method=method or (base.method if base else "rlr"),
        data=data, base=base, device=device, root=root,
        categories=_csv(categories, "--categories"), normal_dir=normal_dir,
        anomalous_dir=anomalous_dir, mask_dir=mask_dir, test_normal_dir=test_normal_dir,
        backbone=backbone, levels=_csv_ints(levels, "--levels"), weights=weights,
        image_size=image_size,
        epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, per_category=per_category,
        feature_cache=feature_cache, val_fraction=val_fraction,
        overrides=[
            *(set_ or []),
            *(["train.amp=true"] if amp else []),
            *([f"train.compile={compile_}"] if compile_ is not None else []),
        ],
    )
    _report_training(fit(config, out, resume=False, progress=progress), out)


def _report_training(results: list, out: Path) -> None:
    for r in results:
        trained = (f"{r.epochs} epochs, final loss {r.final_loss:.4f}"
                   if r.final_loss == r.final_loss else "fitted in one pass")  # NaN: no loss
        console.print(f"{r.name}: {trained}, {r.seconds:.0f} s")
    console.print(f"run saved in {out}")


@app.command()
@user_errors
def test(
    run: Annotated[Path, typer.Option(help="Run folder written by `refad train`.")],
    root: Annotated[Path | None, typer.Option(help="Override the dataset root.")] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu, cuda.")] = None,
    batch_size: Annotated[int, typer.Option()] = 16,
    metrics: Annotated[str, typer.Option(help="exact or binned.")] = "exact",
    progress: Annotated[bool, typer.Option()] = True,
    amp: Annotated[bool, typer.Option(help="bf16 autocast on CUDA (ignored on the CPU).")] = False,
    compile_: Annotated[str | None, COMPILE_OPTION] = None,
    report_: Annotated[
        bool, typer.Option("--report/--no-report", help="Also write the run's report.html.")
    ] = True,
) -> None:
    """Evaluate a run on its test split: seven metrics per category and the mean, and the
    decisions at the calibrated thresholds; then the HTML report."""
    _torch_threads()
    from refad.api import (
        RunDir,
        build_report,
        decisions_table,
        evaluate,
        markdown_table,
        samples_table,
    )

    require_at_least_one("--batch-size", batch_size)
    data = None
    if root is not None:
        data = RunDir(run).read_config().data.model_copy(update={"root": str(root)})
    result = evaluate(run, device, data, batch_size, metrics, progress, amp, compile_)
    console.print(markdown_table(result), highlight=False)
    table = decisions_table(result)
    if table:
        console.print("\nat the calibrated threshold (set on normal images only):", highlight=False)
        console.print(table, highlight=False)
    if result.get("samples"):  # multi-view parts (Real-IAD)
        console.print("\nper sample (all views of a part):", highlight=False)
        console.print(samples_table(result), highlight=False)
    console.print(f"written: {run / 'metrics.json'}, {run / 'metrics.md'}")
    if report_:
        console.print(f"report: {build_report(run, device, amp=amp, compile_mode=compile_)}")


@app.command()
@user_errors
def report(
    run: Annotated[Path, typer.Option(help="Run folder evaluated by `refad test`.")],
    device: Annotated[str | None, typer.Option(help="auto, cpu, cuda.")] = None,
    gallery: Annotated[int, typer.Option(help="Images per gallery row.")] = 3,
) -> None:
    """Write the run's self-contained report.html (metrics, curves, decisions, gallery)."""
    _torch_threads()
    from refad.api import build_report

    require_at_least_one("--gallery", gallery)
    console.print(f"report: {build_report(run, device, gallery)}")


@app.command()
@user_errors
def predict(
    inputs: Annotated[list[Path], typer.Argument(help="Images and/or folders.")],
    out: Annotated[Path, typer.Option(help="Where heatmaps and the summary go.")],
    run: Annotated[Path | None, typer.Option(help="Run folder written by `refad train`.")] = None,
    model: Annotated[
        Path | None, typer.Option(help="Exported folder written by `refad export`.")
    ] = None,
    runtime: Annotated[
        str | None, typer.Option(help="With --model: onnxruntime or openvino (default: by "
                                 "the export's format).")
    ] = None,
    category: Annotated[str | None, typer.Option(
        help="The images' product: its own threshold (per-category runs: its model); "
        "without it the global threshold decides."
    )] = None,
    device: Annotated[str | None, typer.Option()] = None,
    batch_size: Annotated[int, typer.Option()] = 8,
    amp: Annotated[bool, typer.Option(help="bf16 autocast on CUDA (ignored on the CPU).")] = False,
    compile_: Annotated[str | None, COMPILE_OPTION] = None,
    overwrite: Annotated[bool, typer.Option(
        help="Empty a non-empty --out first (without it, such a folder is refused)."
    )] = False,
    format_: Annotated[str, typer.Option(
        "--format", help="refad (heatmaps, overlays, predictions.json) or mvtec_ad2 (float16 "
        "TIFF maps + thresholded PNGs for the MVTec AD 2 server; inputs: its root, objects "
        "or split folders)."
    )] = "refad",
) -> None:
    """Score images; write heatmaps, overlays and predictions.json/.csv."""
    require_at_least_one("--batch-size", batch_size)
    if format_ != "refad":
        _predict_submission(format_, inputs, out, run, model, category, device, batch_size)
        return
    if (run is None) == (model is None):
        raise RefadError("predict: give exactly one of --run and --model")
    ignored = [flag for flag, given in (("--amp", amp), ("--compile", compile_ is not None),
                                        ("--runtime", runtime is not None))
               if given and (flag == "--runtime") == (model is None)]
    if ignored:
        with_ = "--run" if model is None else "--model"
        raise RefadError(f"{ignored[0]}: has no effect with {with_} (--amp and --compile "
                         "apply to a run folder, --runtime to an export)")
    if model is not None:
        from refad.api import predict_exported

        report = predict_exported(model, inputs, out, category, batch_size, runtime,
                                  "cpu" if device is None else device, overwrite)
    else:
        _torch_threads()
        from refad.api import predict as run_predict

        report = run_predict(run, inputs, out, device, category, batch_size, amp, compile_,
                             overwrite)
    for p in report.predictions:
        verdict = "" if p.anomalous is None else (" ANOMALOUS" if p.anomalous else " normal")
        console.print(f"{p.score:.4f}{verdict}  {p.path}", highlight=False)
    for note in report.notes:
        console.print(f"note: {note}", highlight=False)
    console.print(f"{len(report.predictions)} images scored ({report.scored_with}); results "
                  f"in {out}", highlight=False)
    console.print(report.decision_line(), highlight=False)
    if report.failures:
        for line in report.failures:
            print_error(line)
        raise typer.Exit(2)


def _predict_submission(format_: str, inputs: list[Path], out: Path, run: Path | None,
                        model: Path | None, category: str | None, device: str | None,
                        batch_size: int) -> None:
    """`predict --format mvtec_ad2`: the evaluation server's files (one line per failure)."""
    from refad.api import PREDICT_FORMATS, predict_submission

    if format_ not in PREDICT_FORMATS:
        raise RefadError(f"--format: {format_!r} is not one of {', '.join(PREDICT_FORMATS)}")
    _torch_threads()
    report = predict_submission(run, inputs, out, device, batch_size, model, category)
    for key, count in report.written.items():
        console.print(f"{key}: {count} anomaly maps", highlight=False)
    console.print(f"written: {out}/anomaly_images (float16 TIFF) and "
                  f"{out}/anomaly_images_thresholded (PNG 0/255)", highlight=False)
    if report.failures:
        for line in report.failures:
            print_error(line)
        raise typer.Exit(2)


@app.command()
@user_errors
def compare(
    out: Annotated[Path, typer.Option(help="Folder: one run per method + comparison.md.")],
    methods: Annotated[str, typer.Option(help="Comma-separated, e.g. rlr,uniad,crad.")] = (
        "rlr,uniad,crad"
    ),
    data: Annotated[
        str | None, typer.Option(help="Dataset layout: mvtec, visa, folder, mvtec_ad2 or "
                                 "real_iad (default mvtec).")
    ] = None,
    root: Annotated[Path | None, typer.Option(help="Dataset root.")] = None,
    categories: Annotated[str | None, typer.Option(help="Comma-separated; default all.")] = None,
    backbone: Annotated[str | None, typer.Option(help="Same backbone for all methods.")] = None,
    weights: Annotated[str | None, typer.Option(help="auto, none, or a file.")] = None,
    epochs: Annotated[int | None, typer.Option(help="Same for all; default each paper's.")] = None,
    device: Annotated[str | None, typer.Option(help="auto (default), cpu, cuda.")] = None,
    set_: Annotated[list[str] | None, typer.Option(
        "--set", help="section.field=value for every method; METHOD:section.field=value for one"
    )] = None,
    resume: Annotated[bool, typer.Option()] = False,
    progress: Annotated[bool, typer.Option()] = True,
) -> None:
    """Train and evaluate several methods on one dataset; write one side-by-side table."""
    _torch_threads()
    from refad.api import compare as run_compare

    base = {"data": data, "root": root, "categories": _csv(categories, "--categories"),
            "backbone": backbone, "weights": weights, "epochs": epochs, "device": device}
    shared, per_method = _split_method_settings(set_ or ())
    run_compare(_csv(methods, "--methods") or [], base, out, overrides=shared,
                method_overrides=per_method, resume=resume, progress=progress)
    console.print((out / "comparison.md").read_text(), highlight=False)
    console.print(f"written: {out / 'comparison.md'}, {out / 'comparison.json'}")


def _split_method_settings(items: list[str] | tuple[str, ...]
                           ) -> tuple[list[str], dict[str, list[str]]]:
    """`--set section.field=value` for every method, `--set METHOD:section.field=value` for
    one (a field only that method has, e.g. patchcore:model.coreset_ratio=0.02)."""
    shared: list[str] = []
    per_method: dict[str, list[str]] = {}
    for item in items:
        head, sep, rest = item.partition(":")
        if sep and "=" not in head and "." not in head:
            per_method.setdefault(head, []).append(rest)
        else:
            shared.append(item)
    return shared, per_method


@app.command("import-authors")
@user_errors
def import_authors(
    method: Annotated[str, typer.Option(help="rlr, uniad or crad.")],
    checkpoint: Annotated[Path, typer.Option(help="The authors' .pth/.pth.tar file.")],
    out: Annotated[Path, typer.Option(help="Run folder to write.")],
    data: Annotated[str, typer.Option(help="Dataset layout for later test runs.")] = "mvtec",
    root: Annotated[Path | None, typer.Option(help="Dataset root.")] = None,
    backbone: Annotated[str | None, typer.Option(help="Backbone the file was trained on.")] = None,
    weights: Annotated[str | None, typer.Option(help="Backbone weights file.")] = None,
    device: Annotated[str, typer.Option()] = "cpu",
    set_: Annotated[list[str] | None, typer.Option("--set", help="section.field=value")] = None,
) -> None:
    """Turn a checkpoint of the authors' code into a refad run (read with weights_only)."""
    _torch_threads()
    from refad.api import build_config, import_run

    config = build_config(method=method, data=data, root=root, backbone=backbone,
                          weights=weights, device=device, overrides=set_)
    run_dir = import_run(method, checkpoint, out, config, device)
    console.print(f"imported {checkpoint} into {run_dir}; evaluate: refad test --run {run_dir}")


@app.command()
@user_errors
def export(
    run: Annotated[Path, typer.Option(help="Run folder written by `refad train`.")],
    out: Annotated[Path, typer.Option(help="Folder to write (graph + refad-deploy.json).")],
    format_: Annotated[str, typer.Option("--format", help="onnx or openvino.")] = "onnx",
    precision: Annotated[str, typer.Option(help="fp32; openvino also fp16, bf16, int8.")] = "fp32",
    overwrite: Annotated[bool, typer.Option(
        help="Replace a non-empty --out (only once the new export has passed its check).",
    )] = False,
) -> None:
    """Export a run to ONNX or OpenVINO: one graph per unit, checked against PyTorch."""
    _torch_threads()
    from refad.api import export_run

    meta = export_run(run, out, format_, precision, overwrite=overwrite)
    parity = "; ".join(
        f"{unit}: map max diff {p['map_max_rel']:.1e} of range, score max rel diff "
        f"{p['score_max_rel']:.1e}, decision flips {p['decision_flips']}"
        for unit, p in ((u, info["parity"]) for u, info in meta["units"].items())
    )
    console.print(f"exported {run} to {out} ({format_}, {precision}); parity against PyTorch: "
                  f"{parity}", highlight=False, soft_wrap=True)


@app.command()
@user_errors
def serve(
    run: Annotated[Path | None, typer.Option(help="Run folder to serve (PyTorch).")] = None,
    model: Annotated[
        Path | None, typer.Option(help="Exported folder to serve (torch-free runtime).")
    ] = None,
    host: Annotated[str, typer.Option(help="Address to bind (loopback by default).")] = (
        "127.0.0.1"
    ),
    port: Annotated[int, typer.Option()] = 8000,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda.")] = "auto",
    api_key_file: Annotated[
        Path | None,
        typer.Option(help="File holding the API key (or set REFAD_API_KEY); never the key."),
    ] = None,
    max_batch: Annotated[int, typer.Option(help="Images scored together at most.")] = 16,
    max_pixels_in_flight: Annotated[int, typer.Option(
        help="Pixels of all requests being processed at once (bounds memory); beyond: 503.",
    )] = 128_000_000,
) -> None:
    """HTTP API and inspection page for a run or an exported folder."""
    from refad.api import serve as run_server

    if (run is None) == (model is None):
        raise RefadError("serve: give exactly one of --run and --model")
    require_at_least_one("--max-batch", max_batch)
    code = run_server(run_dir=run, model_dir=model, host=host, port=port, device=device,
                      api_key_file=api_key_file, max_batch=max_batch,
                      max_pixels_in_flight=max_pixels_in_flight)
    if code:
        raise typer.Exit(code)


@app.command()
@user_errors
def demo(
    out: Annotated[Path | None, typer.Option(
        help="Folder for demo data and runs (default ./refad-demo, with --hires "
        "./refad-demo-hires).")] = None,
    epochs: Annotated[int | None, typer.Option(help="Default: the demo's schedule.")] = None,
    image_size: Annotated[int | None, typer.Option(help="Default: the demo's size.")] = None,
    device: Annotated[str, typer.Option()] = "auto",
    progress: Annotated[bool, typer.Option()] = True,
    hires: Annotated[bool, typer.Option(
        "--hires", help="The high-resolution product instead (wafer, 1024 px, defects of "
        "10-30 px): PatchCore resized to 256 px against 256-px tiles at native resolution."
    )] = False,
) -> None:
    """Offline demo: generate products, train RLR on Lite2, evaluate, decide per product,
    draw heatmaps and defect masks, write the HTML report."""
    for flag, value in (("--epochs", epochs), ("--image-size", image_size)):
        if value is not None:
            require_at_least_one(flag, value)
            if hires:
                raise RefadError(f"{flag}: not used by --hires (PatchCore has no epochs; its "
                                 "input is 256 px, tiled or resized)")
    _torch_threads()
    if hires:
        from refad.api import run_hires_demo

        run_hires_demo(out or Path("refad-demo-hires"), device=device, progress=progress,
                       echo=lambda s: console.print(s, highlight=False))
        return
    from refad.api import run_demo

    run_demo(out or Path("refad-demo"), epochs=epochs, image_size=image_size, device=device,
             progress=progress,
             echo=lambda s: console.print(s, highlight=False))



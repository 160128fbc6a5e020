"""The `pipeline` command: one thin command per stage. The work happens in the stage modules."""

from __future__ import annotations

import functools
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Optional

import typer

from pipeline.config import load_config
from pipeline.errors import PipelineError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Chinese policy-text theme classification.")
log = logging.getLogger("pipeline")

ConfigArg = typer.Argument(..., help="YAML config, e.g. configs/default.yaml.")
SetOpt = typer.Option(None, "--set", help="Override a config key: --set train.epochs=3 (repeatable).")


def _setup() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr, force=True)
    # Libraries chatter at INFO/WARNING about things users cannot act on; keep their errors.
    for name in ("transformers", "datasets", "huggingface_hub", "accelerate"):
        logging.getLogger(name).setLevel(logging.ERROR)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    # Tokenising and shard-writing bars flash by in seconds; training keeps its own bar on a terminal.
    hf_logging.disable_progress_bar()
    import datasets

    datasets.disable_progress_bars()


def handle_errors(func):
    """A PipelineError becomes one line on stderr and exit code 2, never a traceback."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            _setup()
            return func(*args, **kwargs)
        except PipelineError as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            typer.echo("interrupted; nothing half-written was kept", err=True)
            raise typer.Exit(130) from None
        except Terminated:
            typer.echo("terminated (SIGTERM); nothing half-written was kept", err=True)
            raise typer.Exit(143) from None

    return wrapper


class Terminated(BaseException):
    """Raised in the main thread on SIGTERM (what timeout, docker stop and Slurm send), so that the same
    clean-up as for Ctrl-C runs: temporary files and folders are removed on the way out."""


def _on_sigterm(signum, frame):
    # Once: a second SIGTERM (Slurm's scancel, then torchrun forwarding it) must not interrupt the clean-up.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise Terminated()


@app.command()
@handle_errors
def prepare(config: Path = ConfigArg, set_: Optional[list[str]] = SetOpt):
    """Articles → clean paragraphs → labels → train/validation/test splits."""
    from pipeline.data import prepare as run_prepare

    cfg = load_config(config, set_)
    report = run_prepare(cfg)
    _print_prepare(report, cfg.data.output_dir)


def _print_prepare(report: dict, out: str) -> None:
    dropped = report["dropped"]["counts"]
    sizes = ", ".join(f"{name} {split['paragraphs']}" for name, split in report["splits"].items())
    typer.echo(
        f"prepared {report['labelled']} labelled paragraphs into {out} ({sizes}); "
        f"read {report['paragraphs_read']}, unlabelled {report['unlabelled_not_used']} (not used), "
        f"dropped {sum(dropped.values())} lines {dropped or ''}"
    )


@app.command()
@handle_errors
def pretrain(config: Path = ConfigArg, set_: Optional[list[str]] = SetOpt,
             force: bool = typer.Option(False, help="Rebuild even if this pretraining config was built before.")):
    """Build a Chinese tokenizer and pretrain a BERT masked-LM on the configured corpus."""
    from pipeline.pretrain import pretrain as run_pretrain

    cfg = load_config(config, set_)
    if cfg.pretrain is None:
        raise PipelineError(f"{config} has no pretrain section; add one (see configs/default.yaml)")
    out = run_pretrain(cfg.pretrain, seed=cfg.seed, force=force)
    typer.echo(f"pretrained base: {out}")


@app.command()
@handle_errors
def train(config: Path = ConfigArg, set_: Optional[list[str]] = SetOpt,
          resume: bool = typer.Option(False, "--resume", help="Continue an interrupted run; an error if it has no checkpoint "
                                      "(without it, an interrupted run with the same config continues too, else starts over).")):
    """Fine-tune a classifier on the prepared splits (transformers.Trainer)."""
    from pipeline.train import train as run_train

    cfg = load_config(config, set_)
    _resolve_base(cfg)
    run_dir = run_train(cfg, resume=resume)
    typer.echo(f"trained: {run_dir}")


def _resolve_base(cfg) -> None:
    """With a pretrain section and no explicit model, fine-tune from that section's base (built if missing);
    a packaged base (package:multilingual-e5-small) is converted into a model folder once, then reused."""
    from pipeline import convert

    if convert.is_packaged(cfg.model.name_or_path):
        output_dir = cfg.pretrain.output_dir if cfg.pretrain is not None else "models/pretrained"
        cfg.model.name_or_path = str(convert.convert(cfg.model.name_or_path, output_dir))
    elif cfg.pretrain is not None and cfg.model.name_or_path is None:
        from pipeline.pretrain import pretrain as run_pretrain

        cfg.model.name_or_path = str(run_pretrain(cfg.pretrain, seed=cfg.seed))


@app.command()
@handle_errors
def evaluate(run_dir: Path = typer.Argument(Path("models/latest"), help="Run directory."),
             split: str = typer.Option("test", help="Split to score: test or validation.")):
    """Score a run on the held-out split; write metrics.json, report.html, report.md and a model card into it
    (validation: metrics-validation.json and predictions-validation.jsonl only)."""
    from pipeline.evaluate import evaluate as run_evaluate

    metrics = run_evaluate(run_dir, split)
    _print_metrics(metrics, run_dir)


def _print_metrics(m: dict, run_dir: Path) -> None:
    line = f"{m['split']}: primary macro-F1 {m['primary']['macro_f1']:.3f}, accuracy {m['primary']['accuracy']:.3f}"
    if "none" in m and m["none"]["support"]:  # a split without unlabelled paragraphs cannot score it
        line += f", none F1 {m['none']['f1']:.3f}"
    tf = m["baselines"].get("tfidf_char_lr")
    if tf:
        line += f" (TF-IDF baseline macro-F1 {tf['primary']['macro_f1']:.3f})"
    if m["split"] == "test":
        shown = f"report: {Path(run_dir) / 'report.html'} (and report.md)"
    else:
        from pipeline.evaluate import output_files

        shown = "written: " + ", ".join(str(Path(run_dir) / f) for f in output_files(m["split"]))
    typer.echo(f"{line}\n{shown}")


@app.command()
@handle_errors
def predict(
    inputs: list[str] = typer.Argument(..., help="Article files, folders, .jsonl files, or - for stdin."),
    model: Path = typer.Option(Path("models/latest"), "--model", help="Run directory, or an export folder from `pipeline export`."),
    output: Optional[str] = typer.Option(None, "--output", "-o", help="Output file ({shard} becomes the shard index); stdout if omitted."),
    fmt: Optional[str] = typer.Option(None, "--format", help="jsonl or csv; default: csv for an --output ending in .csv, else jsonl."),
    batch_size: int = typer.Option(64, min=1, help="Windows per forward pass (rounded up to a multiple of 16)."),
    summary: Optional[str] = typer.Option(None, "--summary", help="Also write one JSON line per article: theme shares, main themes."),
    shard: Optional[str] = typer.Option(None, "--shard", help="i/n: only records k with k mod n = i; auto: from RANK/WORLD_SIZE (torchrun)."),
    engine: str = typer.Option("auto", "--engine", help="auto, torch or onnx (a run's export-onnx folder)."),
    quantize: Optional[str] = typer.Option(None, "--quantize", help="int8: dynamic quantisation of the Linear layers (CPU)."),
    dtype: str = typer.Option("auto", "--dtype", help="auto (bfloat16 where the hardware runs it natively: AMX CPUs, "
                              "recent GPUs; else float32), float32 (the exact scores) or bfloat16."),
    streams: Optional[int] = typer.Option(None, "--streams", help="Batches scored at once, each on CPUs/streams threads "
                                          "(default: 2 on a CPU with 2 or more cores, 1 on a GPU)."),
):
    """Classify every paragraph of new articles (batch inference)."""
    from pipeline.predict import predict as run_predict

    fmt = fmt or ("csv" if output and output.lower().endswith(".csv") else "jsonl")
    counts = run_predict(model, inputs, output, fmt, batch_size, summary=summary, shard=shard, engine=engine,
                         quantize=quantize, dtype=dtype, streams=streams)
    # On stderr, so that with the output on stdout the records stay clean.
    dropped = counts["dropped"]
    typer.echo(f"wrote {counts['records']} records (shard {counts['shard']}, {counts['engine']}, "
               f"{counts['records_per_second']:.0f}/s) to {counts['output'] or 'stdout'} "
               f"({counts['multi_window_records']} needed several windows); "
               f"article lines not classified: {sum(dropped.values())} {dropped or ''}".rstrip(), err=True)


@app.command()
@handle_errors
def export(
    run_dir: Path = typer.Argument(Path("models/latest"), help="Run directory."),
    fmt: str = typer.Option("onnx", "--format", help="onnx (model.onnx), or torch (weights, quantised when loaded)."),
    quantize: Optional[str] = typer.Option(None, "--quantize", help="int8: dynamic int8 quantisation."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Folder to write; default RUN_DIR/export-<format>[-int8]."),
    check: Optional[list[str]] = typer.Option(None, "--check", help="Inputs (as predict takes them) to compare the export with the float model on."),
):
    """Export a run for deployment (ONNX and/or int8) and check its parity with the float model."""
    from pipeline.export import export as run_export

    result = run_export(run_dir, fmt, quantize, output, check)
    typer.echo(f"exported: {result['dir']}")
    if "parity" in result:
        p = result["parity"]
        typer.echo(f"parity with the float model on {p['records']} records: identical top theme "
                   f"{p['identical_top']:.2%}, max score difference {p['max_score_difference']:.4f}"
                   + (" (the transformer half; the n-gram half is copied unchanged)" if "blend" in result else ""))


@app.command()
@handle_errors
def run(config: Path = ConfigArg, set_: Optional[list[str]] = SetOpt):
    """prepare → (pretrain) → train → evaluate, from one config."""
    from pipeline import runs
    from pipeline.data import prepare as run_prepare
    from pipeline.evaluate import evaluate as run_evaluate
    from pipeline.train import train as run_train

    cfg = load_config(config, set_)
    seconds, started = {}, time.perf_counter()

    def lap(stage: str) -> None:
        nonlocal started
        seconds[stage] = round(time.perf_counter() - started, 1)
        started = time.perf_counter()

    report = run_prepare(cfg)
    _print_prepare(report, cfg.data.output_dir)
    if not report["splits"]["test"]["paragraphs"]:  # say so now, not after training
        raise PipelineError(f"{cfg.data.output_dir}/test.jsonl is empty, so `run` would have nothing to evaluate on: "
                            f"raise data.test_fraction, or give a test table (data.tables[].split: test)")
    lap("prepare")
    _resolve_base(cfg)
    lap("pretrain")  # near zero when the base is reused
    run_dir = run_train(cfg)
    typer.echo(f"trained: {run_dir}")
    lap("train")
    _print_metrics(run_evaluate(run_dir), run_dir)
    lap("evaluate")
    total = round(sum(seconds.values()), 1)
    runs.write_json(run_dir / "stages.json", {"seconds": seconds, "total_seconds": total})
    typer.echo("stage seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in seconds.items()) + f"; total {total:.0f}")


@app.command()
@handle_errors
def cv(config: Path = ConfigArg, folds: int = typer.Option(5, "--folds", min=2, help="Number of folds K."),
       set_: Optional[list[str]] = SetOpt):
    """K-fold cross-validation on train+validation (the test split stays unseen): mean ± std."""
    from pipeline.cv import cv as run_cv

    cfg = load_config(config, set_)
    _resolve_base(cfg)
    result = run_cv(cfg, folds)
    for name, s in result["summary"].items():
        typer.echo(f"{name}: {s['mean']:.3f} ± {s['std']:.3f}")
    typer.echo(f"report: {result['dir']}/cv.html (and cv.md)")


@app.command()
@handle_errors
def compare(run_dirs: list[Path] = typer.Argument(..., help="Evaluated run directories; deltas are against the first."),
            output: Path = typer.Option(Path("compare.html"), "--output", "-o", help="Where to write the HTML page.")):
    """Runs side by side: headline metrics, deltas against the first run, config differences."""
    from pipeline.report import render_compare_text, write_compare

    table = write_compare(run_dirs, output)
    typer.echo(render_compare_text(table))
    typer.echo(f"page: {output}")


@app.command("report-screenshot")
@handle_errors
def report_screenshot(
    page: Path = typer.Argument(Path("models/latest"), help="A run directory (its report.html) or an HTML page (cv.html, compare.html)."),
    output: Path = typer.Option(Path("report.png"), "--output", "-o", help="PNG to write."),
    width: int = typer.Option(1280, min=320, help="Page width in pixels."),
):
    """Screenshot a report page in headless Chromium, to look at it (needs `make browser`)."""
    from pipeline.report import REPORT_HTML, screenshot

    typer.echo(f"screenshot: {screenshot(page / REPORT_HTML if page.is_dir() else page, output, width)}")


label_app = typer.Typer(no_args_is_help=True,
                        help="Tools for gold labels: check, suggest, agreement, and export/import for Label Studio and doccano.")
app.add_typer(label_app, name="label")


def _label_schema(config: Path):
    """The config, its label schema resolved: listed in it, or derived by `prepare` (themes: null)."""
    from pipeline.data import resolve_schema

    cfg = load_config(config)
    resolve_schema(cfg, cfg.data.output_dir)
    return cfg


@label_app.command("check")
@handle_errors
def label_check(config: Path = ConfigArg, output: Path = typer.Option(Path("label_check.jsonl"), "--output", "-o"),
                min_confidence: float = typer.Option(0.6, min=0.0, max=1.0, help="Report disagreements at least this confident (0-1)."),
                set_: Optional[list[str]] = SetOpt):
    """List likely label errors: cross-validated predictions that confidently disagree with the gold label."""
    from pipeline.label import check

    suspects = check(load_config(config, set_), output, min_confidence=min_confidence)
    for s in suspects[:20]:
        typer.echo(f"{s['where']}  gold {s['gold']}  predicted {s['predicted']} ({s['confidence']:.2f})  {s['text'][:50]}")
    typer.echo(f"{len(suspects)} paragraphs to review, written to {output}")


@label_app.command("suggest")
@handle_errors
def label_suggest(config: Path = ConfigArg, model: Path = typer.Option(Path("models/latest"), "--model"),
                  n: int = typer.Option(100, "--n", min=1, help="How many paragraphs to suggest."),
                  output: Path = typer.Option(Path("to_label.jsonl"), "--output", "-o"),
                  set_: Optional[list[str]] = SetOpt):
    """Rank unlabelled paragraphs by how much labelling them would teach the model; write them ready to label."""
    from pipeline.label import suggest

    rows = suggest(load_config(config, set_), model, output, n)
    typer.echo(f"{len(rows)} paragraphs to label written to {output}: fill in primary (a theme or none) and secondary")


@label_app.command("agreement")
@handle_errors
def label_agreement(first: Path = typer.Argument(..., help="Labels by annotator A (JSONL)."),
                    second: Path = typer.Argument(..., help="Labels by annotator B, same ids."),
                    config: Path = typer.Option(Path("configs/default.yaml"), "--config", help="For the theme schema.")):
    """Cohen's kappa between two annotators, on the primary theme and per theme."""
    from pipeline.label import agreement

    result = agreement(first, second, _label_schema(config).theme_ids)
    typer.echo(f"{result['paragraphs']} paragraphs; primary: kappa {result['primary']['kappa']:.3f}, "
               f"agreement {result['primary']['agreement']:.3f}")
    for theme, s in result["themes"].items():
        typer.echo(f"  {theme:<11} kappa {s['kappa']:.3f}  agreement {s['agreement']:.3f}")


@label_app.command("export")
@handle_errors
def label_export(source: Path = typer.Argument(..., help="JSONL with id and text, e.g. from `pipeline label suggest`."),
                 fmt: str = typer.Option(..., "--format", help="labelstudio or doccano."),
                 output: Path = typer.Option(..., "--output", "-o"),
                 config: Path = typer.Option(Path("configs/default.yaml"), "--config", help="For the theme schema.")):
    """Write paragraphs as Label Studio tasks (plus the interface config) or doccano JSONL."""
    from pipeline.label import export_tasks

    cfg = _label_schema(config)
    n = export_tasks(source, output, fmt, cfg.theme_ids, cfg.train.mode == "multi_label")
    extra = f" and the labelling interface {output.with_suffix('.xml')}" if fmt == "labelstudio" else ""
    typer.echo(f"{n} tasks written to {output}{extra}")


@label_app.command("import")
@handle_errors
def label_import(source: Path = typer.Argument(..., help="The annotation export from Label Studio (JSON) or doccano (JSONL)."),
                 fmt: str = typer.Option(..., "--format", help="labelstudio or doccano."),
                 output: Path = typer.Option(..., "--output", "-o", help="Label file to write (JSONL)."),
                 config: Path = typer.Option(Path("configs/default.yaml"), "--config", help="For the theme schema.")):
    """Turn finished annotations into a label file, checked against the theme schema."""
    from pipeline.label import import_annotations

    cfg = _label_schema(config)
    counts = import_annotations(source, output, fmt, cfg.theme_ids, cfg.train.mode == "multi_label")
    typer.echo(f"{counts['annotated']} labelled paragraphs written to {output} ({counts['not_annotated']} tasks not annotated yet)")


def main() -> None:
    signal.signal(signal.SIGTERM, _on_sigterm)
    app()

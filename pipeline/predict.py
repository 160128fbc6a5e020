"""predict: batch inference over articles, folders, JSONL files or stdin, streamed.

Reads inputs incrementally and writes one record per paragraph (articles) or per JSONL record,
in input order: id, source, paragraph_index, text, label (top theme), labels (themes above
threshold, may be empty), scores (theme → probability) and windows (how many model windows the
text took; long text is scored over overlapping windows, never cut). With --summary, also one
line per article (per source): how many of its paragraphs carry each theme, and its main themes.
Outputs go to temporary files renamed on success, or to stdout.

The model is a run directory (float torch, or int8 dynamic quantisation with quantize="int8") or
an export folder from `pipeline export` (ONNX). Reading and tokenising the next chunk runs in a
worker thread while the model scores the current one; at most two chunks are in memory, so
memory stays flat however large the input. On a CPU, two batches of a chunk are scored at once
(streams), and the model's last layer computes [CLS] only (model.last_layer_cls_only).
"""

from __future__ import annotations

import csv
import io
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from itertools import islice
from pathlib import Path
from typing import Iterator

import numpy as np

from pipeline import runs
from pipeline.data import ARTICLE_SUFFIXES, Dropped, Paragraph, clean_article, decode, read_jsonl_records, read_paragraphs
from pipeline.errors import InputError, PipelineError
from pipeline.model import EXPORT_INFO, cpu_count, decide, encode_windows, label_ids, load_scorer, resolve_precision, score_windows

CHUNK = 512  # records read and tokenised together: big enough to sort by length, small enough to stream
MAIN_SHARE = 0.25  # a theme carried by at least this share of an article's paragraphs is one of its main themes
ENGINES = ("auto", "torch", "onnx")
QUANTIZE = (None, "int8")
DTYPES = (None, "auto", "float32", "bfloat16")  # None: auto


def _stdin_paragraphs(min_chars: int, dropped: Dropped) -> Iterator[Paragraph]:
    """stdin holds JSONL when its first non-blank character is '{', article text otherwise."""
    stream = io.TextIOWrapper(sys.stdin.buffer, encoding="utf-8", errors="strict")
    try:
        first = ""
        for first in stream:
            if first.strip():
                break
        if not first.strip():
            raise InputError("stdin is empty; expected article text or JSONL records")
        if first.lstrip().startswith("{"):
            yield from read_jsonl_records(_chain(first, stream), "<stdin>", "stdin")
            return
        text = first + stream.read()
    except UnicodeDecodeError:
        raise InputError("stdin is not UTF-8; convert it with iconv -t UTF-8") from None
    paragraphs = clean_article(decode(text.encode("utf-8"), "<stdin>"), "<stdin>", min_chars, dropped)
    for index, para in enumerate(paragraphs):
        yield Paragraph(f"stdin:{index}", "<stdin>", index, para)


def _chain(first: str, rest) -> Iterator[str]:
    yield first
    yield from rest


def iter_inputs(inputs: list[str], min_chars: int, dropped: Dropped) -> Iterator[Paragraph]:
    for spec in inputs:
        if spec == "-":
            yield from _stdin_paragraphs(min_chars, dropped)
        else:
            yield from read_paragraphs([spec], min_chars, dropped)


def parse_shard(spec: str | None) -> tuple[int, int]:
    """'i/n' → (i, n); 'auto' → (RANK or LOCAL_RANK, WORLD_SIZE) as torchrun and accelerate set them."""
    if spec is None:
        return 0, 1
    if spec == "auto":
        rank = os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0"))
        spec = f"{rank}/{os.environ.get('WORLD_SIZE', '1')}"
    try:
        index, count = (int(x) for x in spec.split("/"))
    except ValueError:
        raise PipelineError(f"--shard expects i/n (e.g. 0/4) or auto, found {spec!r}") from None
    if not 0 <= index < count:
        raise PipelineError(f"--shard {spec}: expected 0 <= i < n, e.g. 0/{max(count, 1)} to {max(count, 1) - 1}/{max(count, 1)}")
    return index, count


def shard_records(records: Iterator[Paragraph], index: int, count: int) -> Iterator[Paragraph]:
    """Record k of the input (0-based, in input order) belongs to shard k mod count."""
    return islice(records, index, None, count) if count > 1 else records


def resolve_model(model_dir: str | Path, engine: str, quantize: str | None, dtype: str | None = None) -> Path:
    """The folder to load: the given one, or for engine=onnx on a run directory its ONNX export."""
    if engine not in ENGINES:
        raise PipelineError(f"--engine expects one of {', '.join(ENGINES)}, found {engine!r}")
    if quantize not in QUANTIZE:
        raise PipelineError(f"--quantize expects int8, found {quantize!r}")
    if dtype not in DTYPES:
        raise PipelineError(f"--dtype expects auto, float32 or bfloat16, found {dtype!r}")
    if dtype == "bfloat16" and (quantize or engine == "onnx"):
        raise PipelineError("--dtype bfloat16 applies to the float torch model; drop it or drop --quantize/--engine onnx")
    model_dir = Path(model_dir)
    if (model_dir / EXPORT_INFO).is_file():
        info = runs.read_json(model_dir / EXPORT_INFO)
        if engine not in ("auto", info["format"]) or (quantize and quantize != info["quantize"]) or dtype == "bfloat16":
            raise PipelineError(
                f"{model_dir} is a {info['format']} export (quantize: {info['quantize']}), which does not match "
                f"--engine {engine} --quantize {quantize} --dtype {dtype}; drop those options or pass the run directory"
            )
        for name in (runs.MODEL_CONFIG, runs.RESOLVED_CONFIG):
            if not (model_dir / name).is_file():
                raise PipelineError(f"export folder {model_dir} is incomplete: {name} is missing; export it again")
        return model_dir
    runs.check_run_dir(model_dir)
    if engine != "onnx":
        return model_dir
    from pipeline.export import default_dir

    exported = default_dir(model_dir, "onnx", quantize)
    if not (exported / EXPORT_INFO).is_file():
        flag = f" --quantize {quantize}" if quantize else ""
        raise PipelineError(
            f"--engine onnx: {model_dir} has no ONNX export at {exported}; "
            f"create it with `pipeline export {model_dir} --format onnx{flag}`"
        )
    return exported


def float_torch_model(model_dir: Path, engine: str, quantize: str | None) -> bool:
    """Whether the float torch model runs (it can take bfloat16 and a GPU): not ONNX, int8 or an export."""
    return not (quantize or engine == "onnx" or (model_dir / EXPORT_INFO).is_file())


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _threads(shard_count: int) -> int:
    """Every CPU this process may use, split between the processes torchrun/accelerate start on this machine."""
    local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1")) if shard_count > 1 else 1
    return max(1, cpu_count() // max(local_processes, 1))


def _streams(streams: int | None, cpus: int, gpu: bool) -> int:
    """Batches scored at once, each by cpus // streams threads. A small BERT's kernels (GELU, layer
    norm, 64 x 128 x 256 matrix products) scale poorly across threads: on a 2-core CPU, bfloat16 GELU
    is faster on one thread than on two. So two batches on one thread each beat one batch on two:
    1.15-1.25x end to end there (benchmarks/predict_throughput.py). auto (None): two where there
    are at least two CPUs; one on a GPU, whose concurrency comes from the batch."""
    if streams is not None and streams < 1:
        raise PipelineError(f"--streams expects a positive number of concurrent batches, found {streams}")
    if gpu:
        return 1
    return min(streams, cpus) if streams is not None else min(2, cpus)


def _estimate_total(inputs: list[str]) -> int | None:
    """Non-blank lines in the input files: an upper bound on the paragraphs (titles and short lines are
    dropped), cheap next to inference. None for stdin and named corpora, which cannot be read twice."""
    files = []
    for spec in inputs:
        path = Path(spec)
        if spec == "-" or spec.startswith("corpus:") or not path.exists():
            return None
        suffixes = ARTICLE_SUFFIXES | {".jsonl"}
        files += sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in suffixes) if path.is_dir() else [path]
    total = 0
    for path in files:
        with path.open("rb") as handle:
            total += sum(1 for line in handle if line.strip())
    return total


class _Writer:
    """JSONL or CSV records, one per paragraph."""

    def __init__(self, handle, fmt: str, theme_ids: list[str]):
        self.handle, self.fmt, self.theme_ids = handle, fmt, theme_ids
        if fmt == "csv":
            self.csv = csv.writer(handle)
            self.csv.writerow(["id", "source", "paragraph_index", "label", "labels", "windows",
                               *[f"score_{t}" for t in theme_ids], "text"])

    def write(self, record: dict) -> None:
        if self.fmt == "jsonl":
            self.handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        else:
            self.csv.writerow([record["id"], record["source"], record["paragraph_index"], record["label"],
                               ";".join(record["labels"]), record["windows"],
                               *[record["scores"][t] for t in self.theme_ids], record["text"]])


class _Summary:
    """One JSON line per source (article file, JSONL file, stdin), written when the next source starts.

    Paragraphs of a source arrive together, so only the current source is held in memory. Counts
    (not only shares) are written so that the summaries of several shards can be added up.
    """

    def __init__(self, handle, theme_ids: list[str]):
        self.handle, self.theme_ids = handle, theme_ids
        self.source, self.n, self.carry, self.score_sum = None, 0, None, None

    def add(self, source: str, labels: list[list[str]], probs: np.ndarray, rows: slice) -> None:
        if source != self.source:
            self.flush()
            self.source, self.n = source, 0
            self.carry = dict.fromkeys(self.theme_ids, 0)
            self.score_sum = np.zeros(len(self.theme_ids))
        for ls in labels[rows]:
            for theme in ls:
                self.carry[theme] += 1
        self.score_sum += probs[rows].sum(axis=0)
        self.n += rows.stop - rows.start

    def flush(self) -> None:
        if self.source is None:
            return
        shares = {t: round(k / self.n, 4) for t, k in self.carry.items()}
        main = sorted((t for t in self.theme_ids if shares[t] >= MAIN_SHARE), key=lambda t: -shares[t])
        self.handle.write(json.dumps({
            "source": self.source,
            "paragraphs": self.n,
            "main_themes": main,
            "theme_shares": shares,
            "theme_paragraphs": self.carry,
            "mean_scores": {t: round(float(s / self.n), 4) for t, s in zip(self.theme_ids, self.score_sum)},
        }, ensure_ascii=False) + "\n")
        self.source = None


def _runs_by_source(chunk: list[Paragraph]) -> Iterator[tuple[str, slice]]:
    """(source, rows) for each run of consecutive records from the same source."""
    start = 0
    for i in range(1, len(chunk) + 1):
        if i == len(chunk) or chunk[i].source != chunk[start].source:
            yield chunk[start].source, slice(start, i)
            start = i


def _output_path(path: str | None, shard: tuple[int, int], option: str) -> Path | None:
    """`{shard}` in a path becomes the shard index, so one command line serves every torchrun process."""
    if path is None:
        return None
    if "{shard}" in path:
        return Path(path.replace("{shard}", str(shard[0])))
    if shard[1] > 1 and os.environ.get("WORLD_SIZE"):
        raise PipelineError(f"{option} {path}: every process would write the same file; put {{shard}} in the name, e.g. preds-{{shard}}.jsonl")
    return Path(path)


def predict(
    run_dir: str | Path,
    inputs: list[str],
    output: str | None = None,
    fmt: str = "jsonl",
    batch_size: int = 64,
    progress: bool | None = None,
    summary: str | None = None,
    shard: str | None = None,
    engine: str = "auto",
    quantize: str | None = None,
    dtype: str | None = "auto",
    streams: int | None = None,
) -> dict:
    """Classify every paragraph of `inputs` (this shard's share of them); returns counts and speed.

    dtype auto runs the float torch model in bfloat16 where the hardware does it natively (AMX CPUs,
    recent GPUs: about 2.4x faster on a 2-core AMX CPU, 99.8% identical top themes) and in float32
    elsewhere, and for ONNX or quantised models; float32 gives the trained model's exact scores."""
    from tqdm.auto import tqdm

    if fmt not in ("jsonl", "csv"):
        raise PipelineError(f"--format expects jsonl or csv, found {fmt!r}")
    if not inputs:
        raise InputError("no input given; pass article files, folders, .jsonl files or - for stdin")
    shard_at = parse_shard(shard)
    model_dir = resolve_model(run_dir, engine, quantize, dtype)
    if summary == "-":
        raise PipelineError("--summary expects a file name, found -; stdout is for the records")
    output_path, summary_path = _output_path(output, shard_at, "--output"), _output_path(summary, shard_at, "--summary")
    from pipeline.config import load_config

    min_chars = load_config(model_dir / runs.RESOLVED_CONFIG).data.min_chars
    float_torch = float_torch_model(model_dir, engine, quantize)
    if dtype in (None, "auto"):  # ONNX and int8 models have no bfloat16 path
        dtype = resolve_precision("auto") if float_torch else "float32"
    cpus = _threads(shard_at[1])
    streams = _streams(streams, cpus, gpu=float_torch and _cuda())
    scorer = load_scorer(model_dir, quantize, threads=cpus // streams, dtype=None if dtype == "float32" else dtype)
    config = scorer.config
    theme_ids = label_ids(config)
    thresholds = getattr(config, "theme_thresholds", None)
    multi = config.problem_type == "multi_label_classification"
    pad_id = scorer.tokenizer.pad_token_id

    dropped = Dropped()
    records = shard_records(iter_inputs(inputs, min_chars, dropped), *shard_at)
    chunks = iter(lambda: list(islice(records, CHUNK)), [])

    def next_encoded():
        # Runs in the worker thread: reading and tokenising overlap the model's work on the previous chunk.
        chunk = next(chunks, None)
        return None if chunk is None else (chunk, *encode_windows(scorer.tokenizer, [p.text for p in chunk]))

    counts = {"records": 0, "windows": 0, "multi_window_records": 0, "shard": f"{shard_at[0]}/{shard_at[1]}",
              "engine": scorer.engine, "streams": streams, "output": str(output_path) if output_path else None}
    show = sys.stderr.isatty() if progress is None else progress
    total = _estimate_total(inputs) if show else None
    if total is not None:
        total = len(range(shard_at[0], total, shard_at[1]))
    started = time.perf_counter()
    with ExitStack() as stack:
        handle = stack.enter_context(runs.atomic_file(output_path)) if output_path else sys.stdout
        summary_out = _Summary(stack.enter_context(runs.atomic_file(summary_path)), theme_ids) if summary_path else None
        bar = stack.enter_context(tqdm(desc="predict", unit=" para", total=total, disable=not show, file=sys.stderr))
        pool = stack.enter_context(ThreadPoolExecutor(max_workers=1, thread_name_prefix="tokenise"))
        batches = stack.enter_context(ThreadPoolExecutor(streams, thread_name_prefix="score")) if streams > 1 else None
        writer = _Writer(handle, fmt, theme_ids)
        pending = pool.submit(next_encoded)
        while (item := pending.result()) is not None:
            pending = pool.submit(next_encoded)
            chunk, ids, owners = item
            probs, windows = score_windows(scorer.forward, ids, owners, len(chunk), len(theme_ids), multi, pad_id, batch_size,
                                           batches)
            probs, none_gate = scorer.blend(probs, [p.text for p in chunk])
            top, labels = decide(probs, theme_ids, thresholds, none_gate)
            for para, t, ls, p, w in zip(chunk, top, labels, probs.tolist(), windows):
                writer.write({
                    **para.as_dict(), "label": t, "labels": ls,
                    "scores": {th: round(x, 4) for th, x in zip(theme_ids, p)}, "windows": w,
                })
            if summary_out:
                for source, rows in _runs_by_source(chunk):
                    summary_out.add(source, labels, probs, rows)
            counts["records"] += len(chunk)
            counts["windows"] += sum(windows)
            counts["multi_window_records"] += sum(w > 1 for w in windows)
            handle.flush()  # a reader downstream of a pipe sees each chunk as soon as it is scored
            bar.update(len(chunk))
        if counts["records"] == 0 and shard_at[1] == 1:
            raise InputError("the inputs hold no paragraphs to classify")
        if summary_out:
            summary_out.flush()
        if bar.total is not None and bar.n != bar.total:
            bar.total = bar.n  # the estimate counted lines that cleaning dropped
            bar.refresh()
    counts["seconds"] = round(time.perf_counter() - started, 3)
    counts["records_per_second"] = round(counts["records"] / max(counts["seconds"], 1e-9), 1)
    counts["dropped"] = dict(dropped.counts)
    return counts

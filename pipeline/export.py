"""export: a run directory → a folder to deploy, and its parity with the float model.

Reads RUN_DIR (model.safetensors, config.json, tokenizer files, config.yaml). Writes OUTPUT
(default RUN_DIR/export-<format>[-int8]/), which `pipeline predict --model OUTPUT` runs:
  model.onnx (format onnx; int8 by onnxruntime dynamic quantisation) or model.safetensors
  (format torch; int8 by torch dynamic quantisation when it is loaded), config.json (labels,
  thresholds), tokenizer files, config.yaml, a blended run's char_ngrams files, and export.json (format, quantize, source run, and
  with --check the parity figures: share of identical top themes, largest score difference).
"""

from __future__ import annotations

import logging
import shutil
import warnings
from contextlib import contextmanager
from itertools import islice
from pathlib import Path

import numpy as np

from pipeline import blend, runs
from pipeline.data import Dropped
from pipeline.errors import PipelineError
from pipeline.model import (EXPORT_INFO, ONNX_FILE, encode_windows, label_ids, last_layer_cls_only, load_run, load_scorer,
                            score_windows)

FORMATS = ("onnx", "torch")
CHECK_RECORDS = 2000  # records the parity check scores: enough to see a 0.1% disagreement, quick on a CPU


def default_dir(run_dir: Path, fmt: str, quantize: str | None) -> Path:
    return Path(run_dir) / f"export-{fmt}{'-int8' if quantize else ''}"


@contextmanager
def _quiet_exporter():
    """The ONNX exporter reports each of its steps and warns about optional packages; keep its errors."""
    names = ("torch.onnx", "torch.export", "torch._dynamo", "torch.fx", "onnxscript", "onnx_ir")
    levels = {name: logging.getLogger(name).level for name in names}
    for name in names:
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


def _export_onnx(model, path: Path, max_length: int) -> None:
    """torch.export-based ONNX export with batch and sequence length left dynamic."""
    import torch

    try:
        import onnxscript  # noqa: F401  (the exporter needs it; fail with the fix, not deep inside torch)
    except ImportError:
        raise PipelineError("ONNX export needs onnx, onnxscript and onnxruntime; install them with pip install -e '.[onnx]'") from None
    # Padding in the example keeps the attention-mask path in the graph (an all-ones mask may be skipped).
    input_ids = torch.ones((2, 16), dtype=torch.long)
    attention_mask = torch.ones((2, 16), dtype=torch.long)
    attention_mask[1, 8:] = 0
    batch, length = torch.export.Dim("batch"), torch.export.Dim("length", max=max_length)
    with _quiet_exporter():
        program = torch.onnx.export(
            model, (), kwargs={"input_ids": input_ids, "attention_mask": attention_mask},
            input_names=["input_ids", "attention_mask"], output_names=["logits"],
            dynamic_shapes={"input_ids": {0: batch, 1: length}, "attention_mask": {0: batch, 1: length}},
            dynamo=True, external_data=False, verbose=False,
        )
        program.save(str(path))


def _quantize_onnx(source: Path, target: Path) -> None:
    """int8 weights for MatMul/Gemm, activations quantised on the fly (onnxruntime dynamic quantisation)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # it advises shape pre-processing, which fails on dynamic-length BERT graphs
    try:
        quantize_dynamic(source, target, weight_type=QuantType.QInt8)
    finally:
        root.setLevel(level)


def export(run_dir: str | Path, fmt: str = "onnx", quantize: str | None = None, output: str | Path | None = None,
           check: list[str] | None = None) -> dict:
    """Write the export folder; with `check` (inputs as predict takes them), measure its parity too."""
    if fmt not in FORMATS:
        raise PipelineError(f"--format expects one of {', '.join(FORMATS)}, found {fmt!r}")
    if quantize not in (None, "int8"):
        raise PipelineError(f"--quantize expects int8, found {quantize!r}")
    run_dir = runs.check_run_dir(run_dir)
    out = Path(output) if output else default_dir(run_dir, fmt, quantize)
    tokenizer, model = load_run(run_dir)
    info = {"format": fmt, "quantize": quantize, "source": str(run_dir.resolve())}
    with runs.atomic_dir(out, marker=EXPORT_INFO) as tmp:  # replaces only an earlier export, never another folder
        tokenizer.save_pretrained(tmp)
        model.config.save_pretrained(tmp)
        shutil.copy(run_dir / runs.RESOLVED_CONFIG, tmp / runs.RESOLVED_CONFIG)
        if blend.load(run_dir, label_ids(model.config)) is not None:
            # A blended run's n-gram half travels as it is; parity below measures the transformer, the half that changes.
            info["blend"] = "char_ngrams copied unchanged"
            for name in (blend.INFO_FILE, blend.WEIGHTS_FILE):
                shutil.copy(run_dir / name, tmp / name)
        if fmt == "onnx":
            float_path = _fresh_float_export(run_dir) if quantize else None
            if float_path is None:
                float_path = tmp / ("model-float.onnx" if quantize else ONNX_FILE)
                # The graph computes the last layer at [CLS] only, as predict's torch model does: same
                # logits (1.6e-7 apart), about 1.3x faster in onnxruntime.
                _export_onnx(last_layer_cls_only(model), float_path, tokenizer.model_max_length)
            if quantize:
                _quantize_onnx(float_path, tmp / ONNX_FILE)
                if float_path.parent == tmp:
                    float_path.unlink()
            info["opset"] = _opset(tmp / ONNX_FILE)
        else:
            shutil.copy(run_dir / runs.WEIGHTS, tmp / runs.WEIGHTS)
        runs.write_json(tmp / EXPORT_INFO, info)
        if check:
            info["parity"] = parity(run_dir, tmp, check)
            runs.write_json(tmp / EXPORT_INFO, info)
    return {"dir": out, **info}


def _fresh_float_export(run_dir: Path) -> Path | None:
    """The run's float ONNX export when it is newer than the weights: quantising it saves exporting again."""
    path = default_dir(run_dir, "onnx", None) / ONNX_FILE
    if path.is_file() and path.stat().st_mtime >= (run_dir / runs.WEIGHTS).stat().st_mtime:
        return path
    return None


def _opset(path: Path) -> int:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def parity(run_dir: Path, candidate_dir: Path, inputs: list[str], limit: int = CHECK_RECORDS, quantize: str | None = None) -> dict:
    """Score the first `limit` records of `inputs` with the float model of `run_dir` and with the
    candidate (an export folder, or the run itself with `quantize`); compare top themes and scores."""
    from pipeline.config import load_config
    from pipeline.predict import iter_inputs

    min_chars = load_config(Path(run_dir) / runs.RESOLVED_CONFIG).data.min_chars
    texts = [p.text for p in islice(iter_inputs(inputs, min_chars, Dropped()), limit)]
    if not texts:
        raise PipelineError(f"--check {' '.join(inputs)}: no paragraphs to compare; pass article files or .jsonl records")
    reference = _probs(load_scorer(Path(run_dir)), texts)
    probs = _probs(load_scorer(Path(candidate_dir), quantize), texts)
    same = reference.argmax(axis=1) == probs.argmax(axis=1)
    return {
        "records": len(texts),
        "identical_top": round(float(same.mean()), 4),
        "max_score_difference": round(float(np.abs(reference - probs).max()), 4),
    }


def _probs(scorer, texts: list[str]) -> np.ndarray:
    config = scorer.config
    ids, owners = encode_windows(scorer.tokenizer, texts)
    multi = config.problem_type == "multi_label_classification"
    probs, _ = score_windows(scorer.forward, ids, owners, len(texts), config.num_labels, multi, scorer.tokenizer.pad_token_id)
    return probs

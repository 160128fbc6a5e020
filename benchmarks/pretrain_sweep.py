"""What each pretraining size costs and what it gives.

For each variant: pretrain a base (pipeline.pretrain), fine-tune it on the prepared splits with
the default config's train section, and evaluate on the test split. Prints one table row per
variant: parameters, steps, training seconds, tokens/s, held-out perplexity, validation and test
primary macro-F1, none F1. Variants are `--set`-style overrides of configs/default.yaml.

    python benchmarks/pretrain_sweep.py                       # the built-in variants
    python benchmarks/pretrain_sweep.py "pretrain.max_steps=300 pretrain.learning_rate=5e-4" "pretrain=null"

Run `pipeline prepare configs/default.yaml` first. Absolute times depend on the machine; compare
rows measured on the same machine.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.config import load_config  # noqa: E402
from pipeline.evaluate import evaluate  # noqa: E402
from pipeline.pretrain import REPORT_JSON, pretrain  # noqa: E402
from pipeline.train import train  # noqa: E402

VARIANTS = [
    "pretrain=null",  # no pretraining: the same architecture, randomly initialised
    "pretrain.max_steps=500",
    "pretrain.max_steps=500 pretrain.whole_word_masking=true",
    "pretrain.max_steps=1000 pretrain.max_length=64",
]


def run_variant(spec: str, out_dir: str) -> dict:
    """spec: `--set`-style overrides of configs/default.yaml. "pretrain=null" skips pretraining
    (random init, or model.name_or_path=PATH to fine-tune an existing base)."""
    overrides = spec.split()
    if "pretrain=null" not in overrides:
        overrides.append(f"pretrain.output_dir={out_dir}/bases")
    cfg = load_config(ROOT / "configs/default.yaml", overrides)
    row = {"variant": spec}
    if cfg.pretrain is not None and cfg.model.name_or_path is None:
        start = time.time()
        base = pretrain(cfg.pretrain, seed=cfg.seed)
        report = json.loads((base / REPORT_JSON).read_text())
        row.update(parameters=report["parameters"], steps=report["steps"], pretrain_s=round(time.time() - start),
                   tokens_per_s=report["tokens_per_second"], perplexity=round(report["heldout_perplexity"], 1))
        cfg.model.name_or_path = str(base)
    cfg.run_name = "sweep-" + "".join(c if c.isalnum() else "-" for c in spec)[:80]
    cfg.train.output_dir = f"{out_dir}/runs"
    start = time.time()
    run_dir = train(cfg)
    row["finetune_s"] = round(time.time() - start)
    metrics = evaluate(run_dir)
    history = json.loads((run_dir / "train_metrics.json").read_text())
    row.update(val_f1=round(history["best_validation_macro_f1"], 3), test_primary_f1=round(metrics["primary"]["macro_f1"], 3),
               test_none_f1=round(metrics.get("none", {}).get("f1", float("nan")), 3),
               tfidf_primary_f1=round(metrics["baselines"]["tfidf_char_lr"]["primary"]["macro_f1"], 3))
    return row


def main() -> None:
    variants = sys.argv[1:] or VARIANTS
    out_dir = "models/sweep"
    rows = []
    for spec in variants:
        rows.append(run_variant(spec, out_dir))
        print(json.dumps(rows[-1]), flush=True)
    keys = ["variant", "parameters", "steps", "pretrain_s", "tokens_per_s", "perplexity", "finetune_s",
            "val_f1", "test_primary_f1", "test_none_f1", "tfidf_primary_f1"]
    print("| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys))
    for row in rows:
        print("| " + " | ".join(str(row.get(k, "-")) for k in keys) + " |")


if __name__ == "__main__":
    main()

"""Does pretraining pay? The same labelled data, folds and fine-tuning budget, with and without the base.

Runs `pipeline cv` twice on configs/default.yaml: fine-tuning the pretrained base, and the same
architecture randomly initialised. Early stopping is switched off (patience = epochs) so the
randomly initialised model gets the full budget too. Prints mean ± std per figure side by side.

    python benchmarks/pretrain_gain.py --folds 3 [--epochs 5]

Needs `pipeline prepare configs/default.yaml` first. About 2 × folds fine-tuning runs
(roughly 5-10 minutes each on a 2-core CPU).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.config import load_config  # noqa: E402
from pipeline.cv import cv  # noqa: E402
from pipeline.pretrain import pretrain  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--config", default=str(ROOT / "configs/default.yaml"))
    parser.add_argument("--epochs", type=float, default=None, help="Fine-tuning epochs for both arms (default: the config's).")
    args = parser.parse_args()
    arms = {}
    for name in ("pretrained", "random-init"):
        cfg = load_config(args.config, [f"run_name=gain-{name}"] + ([f"train.epochs={args.epochs}"] if args.epochs else []))
        cfg.train.early_stopping_patience = int(cfg.train.epochs)  # the full budget for both arms
        if name == "pretrained":
            cfg.model.name_or_path = str(pretrain(cfg.pretrain, seed=cfg.seed))
        else:  # the base's architecture, randomly initialised
            p = cfg.pretrain
            cfg.model = cfg.model.model_copy(update={"name_or_path": None, "hidden_size": p.hidden_size, "num_layers": p.num_layers,
                                                     "num_heads": p.num_heads, "intermediate_size": p.intermediate_size})
            cfg.pretrain = None
        arms[name] = cv(cfg, args.folds)["summary"]
    print(f"| figure ({args.folds}-fold mean ± std) | pretrained base | random initialisation | gain |")
    print("|---|---|---|---|")
    for figure in arms["pretrained"]:
        a, b = arms["pretrained"][figure], arms["random-init"].get(figure)
        if b is None:
            continue
        print(f"| {figure} | {a['mean']:.3f} ± {a['std']:.3f} | {b['mean']:.3f} ± {b['std']:.3f} | {a['mean'] - b['mean']:+.3f} |")


if __name__ == "__main__":
    main()

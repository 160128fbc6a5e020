"""label: tools around the gold labels. They propose; a person reading the paragraph decides.

check      cross-validated predictions that confidently disagree with the gold label (likely errors)
suggest    unlabelled paragraphs ranked by how much labelling them would teach the model
           (uncertainty near the decision thresholds, then diversity), in the labelling format
agreement  Cohen's kappa between two annotators, on the primary and per theme
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from pipeline import blend, runs
from pipeline.config import Config
from pipeline.data import NONE, Dropped, iter_jsonl, read_labels, read_paragraphs, read_table, read_text
from pipeline.errors import InputError
from pipeline.metrics import membership, tfidf_char_lr, tfidf_char_vectorizer


def check(cfg: Config, output: Path, folds: int = 5, min_confidence: float = 0.6) -> list[dict]:
    """Rows whose out-of-fold prediction (TF-IDF char n-gram LR: no fine-tuning, minutes on a CPU) disagrees
    with the gold primary at `min_confidence` or more, most confident first, written to `output`."""
    from sklearn.model_selection import KFold, StratifiedKFold, cross_val_predict

    labels = read_labels(cfg.data.labels, cfg.theme_ids)
    rows = [{"id": i, **lab} for i, lab in labels.items() if lab["text"]]
    rows += [row for source in cfg.data.tables for row in read_table(source)]
    if len(rows) < folds * 2:
        raise InputError(f"label check needs at least {folds * 2} labelled rows with text, found {len(rows)}")
    y = [r["primary"] for r in rows]
    model = tfidf_char_lr()
    # Stratify when every class fills every fold; with rarer classes, plain shuffled folds still work
    # (a class missing from a training fold just scores 0 there).
    stratify = min(np.unique(y, return_counts=True)[1]) >= folds
    splitter = (StratifiedKFold if stratify else KFold)(folds, shuffle=True, random_state=cfg.seed)
    proba = cross_val_predict(model, [r["text"] for r in rows], y, cv=splitter, method="predict_proba")
    classes = sorted(set(y))
    suspects = []
    for row, p in zip(rows, proba):
        best = int(np.argmax(p))
        if classes[best] != row["primary"] and p[best] >= min_confidence:
            suspects.append({"id": row["id"], "where": row["where"], "gold": row["primary"], "predicted": classes[best],
                             "confidence": round(float(p[best]), 3), "text": row["text"]})
    suspects.sort(key=lambda s: -s["confidence"])
    with runs.atomic_file(output) as f:
        f.writelines(json.dumps(s, ensure_ascii=False) + "\n" for s in suspects)
    return suspects


def suggest(cfg: Config, run_dir: Path, output: Path, n: int = 100, min_chars: int = 20) -> list[dict]:
    """The `n` unlabelled paragraphs of cfg.data.inputs closest to the model's decision thresholds,
    skipping near-copies of ones already picked (TF-IDF cosine > 0.5)."""
    from sklearn.metrics.pairwise import cosine_similarity

    from pipeline.model import decide, label_ids, load_run, score_texts

    run_dir = runs.check_run_dir(run_dir)
    labelled = set(read_labels(cfg.data.labels, cfg.theme_ids))
    pool = [p for p in read_paragraphs(cfg.data.inputs, cfg.data.min_chars, Dropped())
            if p.id not in labelled and len(p.text) >= min_chars]
    if not pool:
        raise InputError("no unlabelled paragraphs in data.inputs to suggest from")
    tokenizer, model = load_run(run_dir)
    theme_ids = label_ids(model.config)
    thresholds = getattr(model.config, "theme_thresholds", None) or {t: 0.5 for t in theme_ids}
    texts = [p.text for p in pool]
    probs, _ = score_texts(model, tokenizer, texts)
    ngrams, none_score, none_gate = blend.load(run_dir, theme_ids), None, None
    if ngrams is not None:  # a blended run: rank by the scores it answers with, its none gate included
        probs, none_score = ngrams.scores(probs, texts)
    cut = np.array([thresholds[t] for t in theme_ids])
    distance = np.abs(probs - cut).min(axis=1)  # nearest any threshold = least sure
    if none_score is not None:
        none_gate = none_score >= ngrams.none_threshold
        distance = np.minimum(distance, np.abs(none_score - ngrams.none_threshold))
    uncertainty = -distance
    order = np.argsort(-uncertainty)[: n * 5]
    vectors = tfidf_char_vectorizer().fit_transform([pool[i].text for i in order])
    chosen: list[int] = []
    for rank in range(len(order)):
        if len(chosen) == n:
            break
        if chosen and cosine_similarity(vectors[rank], vectors[chosen]).max() > 0.5:
            continue
        chosen.append(rank)
    _, labels = decide(probs, theme_ids, thresholds, none_gate)
    out = []
    for rank in chosen:
        i = int(order[rank])
        para = pool[i]
        out.append({"id": para.id, "source": para.source, "primary": "", "secondary": [], "text": para.text,
                    "model_labels": labels[i], "model_scores": {t: round(float(x), 3) for t, x in zip(theme_ids, probs[i])}})
    with runs.atomic_file(output) as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in out)
    return out


def agreement(first: Path, second: Path, theme_ids: list[str]) -> dict:
    """Cohen's kappa on the primary (7 classes with none) and per theme (in primary ∪ secondary or not),
    over the ids both files label."""
    from sklearn.metrics import cohen_kappa_score

    a, b = read_labels([str(first)], theme_ids), read_labels([str(second)], theme_ids)
    shared = sorted(set(a) & set(b))
    if not shared:
        raise InputError(f"{first} and {second} label no paragraph in common; expected the same ids")
    rows_a = [a[i] for i in shared]
    rows_b = [b[i] for i in shared]
    result = {
        "paragraphs": len(shared),
        "primary": {"kappa": float(cohen_kappa_score([r["primary"] for r in rows_a], [r["primary"] for r in rows_b])),
                    "agreement": float(np.mean([x["primary"] == y["primary"] for x, y in zip(rows_a, rows_b)]))},
        "themes": {},
    }
    ma, mb = membership(rows_a, theme_ids), membership(rows_b, theme_ids)
    for j, theme in enumerate(theme_ids):
        result["themes"][theme] = {"kappa": float(cohen_kappa_score(ma[:, j], mb[:, j])),
                                   "agreement": float(np.mean(ma[:, j] == mb[:, j]))}
    none_a = [r["primary"] == NONE for r in rows_a]
    none_b = [r["primary"] == NONE for r in rows_b]
    result["themes"][NONE] = {"kappa": float(cohen_kappa_score(none_a, none_b)),
                              "agreement": float(np.mean(np.array(none_a) == np.array(none_b)))}
    return result


# Label Studio and doccano: the tools annotators already use. Export writes tasks (id + text) for
# them; import turns their exports back into our label rows, checked against the schema.

def _label_studio_config(theme_ids: list[str], multi_label: bool = True) -> str:
    """The labelling interface: one required primary choice (a theme, or none where a paragraph may have
    no theme: multi-label) and, multi-label, any secondary themes."""
    primary = "".join(f'<Choice value="{t}"/>' for t in [*theme_ids, *([NONE] if multi_label else [])])
    secondary = "".join(f'<Choice value="{t}"/>' for t in theme_ids)
    return (
        '<View>\n  <Text name="text" value="$text"/>\n'
        f'  <Choices name="primary" toName="text" choice="single" required="true">{primary}</Choices>\n'
        + (f'  <Choices name="secondary" toName="text" choice="multiple">{secondary}</Choices>\n' if multi_label else "")
        + '</View>\n'
    )


def _rows_to_label(path: Path) -> list[dict]:
    rows = []
    for number, row in iter_jsonl(read_text(path).splitlines(), str(path)):
        if not isinstance(row, dict) or "id" not in row or not isinstance(row.get("text"), str):
            raise InputError(f'{path}:{number}: expected an object with "id" and "text", found {json.dumps(row, ensure_ascii=False)[:60]}')
        rows.append(row)
    if not rows:
        raise InputError(f"{path} has no rows to export; expected JSONL with id and text (e.g. from `pipeline label suggest`)")
    return rows


def export_tasks(source: Path, output: Path, fmt: str, theme_ids: list[str], multi_label: bool = True) -> int:
    """Paragraphs of `source` (JSONL with id, text) as Label Studio tasks (JSON, plus the interface
    config beside it as <output>.xml) or doccano text-classification JSONL. Returns the task count."""
    rows = _rows_to_label(source)
    if fmt == "labelstudio" and output.suffix.lower() == ".xml":
        raise InputError(f"-o {output}: expected the tasks file (JSON); the interface is written beside it as "
                         f"<name>.xml: use e.g. -o {output.with_suffix('.json')}")
    if fmt == "labelstudio":
        with runs.atomic_file(output) as f:
            json.dump([{"data": {"text": r["text"], "pid": str(r["id"])}} for r in rows], f, ensure_ascii=False, indent=1)
        with runs.atomic_file(output.with_suffix(".xml")) as f:
            f.write(_label_studio_config(theme_ids, multi_label))
    elif fmt == "doccano":
        with runs.atomic_file(output) as f:
            f.writelines(json.dumps({"text": r["text"], "pid": str(r["id"])}, ensure_ascii=False) + "\n" for r in rows)
    else:
        raise InputError(f"--format expects labelstudio or doccano, found {fmt!r}")
    return len(rows)


def _choices(value, where: str) -> list[str]:
    """Choices as Label Studio writes them: {"choices": [...]} in the JSON export; in JSON-MIN a string, or
    {"choices": [...]} for several. A lone string stays one choice."""
    if isinstance(value, dict):
        value = value.get("choices", [])
    if value is None or value == "":
        return []
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InputError(f"{where}: expected choices as label names, found {json.dumps(value, ensure_ascii=False)[:60]}")
    return value


def _from_label_studio(path: Path) -> tuple[list[tuple[str, dict, list[str], list[str]]], int]:
    """((where, data, primary choices, secondary choices) per annotated task, tasks in the file), from Label
    Studio's JSON export (the latest kept annotation wins) or its JSON-MIN export (one flat object per task)."""
    try:
        tasks = json.loads(read_text(path))
    except json.JSONDecodeError as e:
        raise InputError(f"{path}: expected a Label Studio JSON export, found invalid JSON ({e.msg})") from None
    if not isinstance(tasks, list):
        raise InputError(f"{path}: expected a list of tasks (Label Studio's JSON export), found {type(tasks).__name__}")
    out = []
    for number, task in enumerate(tasks, 1):
        where = f"{path} task {number}"
        if not isinstance(task, dict):
            raise InputError(f"{where}: expected a task object, found {type(task).__name__}")
        if "annotations" not in task and "data" not in task:  # JSON-MIN: data fields and choices side by side
            if "primary" in task:
                out.append((where, task, _choices(task["primary"], where), _choices(task.get("secondary"), where)))
            continue
        annotations = task.get("annotations", [])
        if not isinstance(annotations, list) or not all(isinstance(a, dict) for a in annotations):
            raise InputError(f"{where}: expected \"annotations\" a list of objects (Label Studio's JSON export), "
                             f"found {json.dumps(annotations, ensure_ascii=False)[:60]}")
        kept = [a for a in annotations if not a.get("was_cancelled")]
        if not kept:
            continue
        choices: dict[str, list[str]] = {"primary": [], "secondary": []}
        names = set()
        results = kept[-1].get("result", [])
        if not isinstance(results, list) or not all(isinstance(r, dict) for r in results):
            raise InputError(f"{where}: expected the annotation's \"result\" a list of objects, "
                             f"found {json.dumps(results, ensure_ascii=False)[:60]}")
        for result in results:
            names.add(result.get("from_name"))
            if result.get("from_name") in choices:
                choices[result["from_name"]] = _choices(result.get("value"), where)
        if not choices["primary"] and names - {"primary", "secondary"}:
            raise InputError(
                f"{where}: expected choices named primary/secondary (the interface `pipeline label export` writes, "
                f"<output>.xml), found {', '.join(sorted(map(str, names)))}; label with that interface"
            )
        data = task.get("data")
        if not isinstance(data, dict):
            raise InputError(f"{where}: expected \"data\" an object with the task's text and pid, "
                             f"found {json.dumps(data, ensure_ascii=False)[:60]}")
        out.append((where, data, choices["primary"], choices["secondary"]))
    return out, len(tasks)


def _from_doccano(path: Path) -> tuple[list[tuple[str, dict, list[str], list[str]]], int]:
    """doccano has no primary/secondary: the first label is the primary; label `none` for no theme."""
    out, total = [], 0
    for number, row in iter_jsonl(read_text(path).splitlines(), str(path)):
        total += 1
        if not isinstance(row, dict):
            raise InputError(f"{path}:{number}: expected a JSON object (doccano's JSONL export), found {type(row).__name__}")
        labels = row.get("label") or row.get("labels") or []
        if isinstance(labels, str):
            labels = [labels]
        if not isinstance(labels, list) or not all(isinstance(label, str) for label in labels):
            raise InputError(f"{path}:{number}: expected \"label\" a list of label names (a doccano text-classification "
                             f"project), found {json.dumps(labels, ensure_ascii=False)[:60]}; span labels are not classes")
        if labels:
            out.append((f"{path}:{number}", row, labels[:1], labels[1:]))
    return out, total


def import_annotations(source: Path, output: Path, fmt: str, theme_ids: list[str], multi_label: bool = True) -> dict:
    """Annotations exported from Label Studio or doccano → our label rows (id, primary, secondary, text).
    Tasks nobody annotated are counted, not written."""
    if not source.is_file():
        raise InputError(f"{source} not found; pass the file exported from {fmt}")
    if fmt == "labelstudio":
        annotated, total = _from_label_studio(source)
    elif fmt == "doccano":
        annotated, total = _from_doccano(source)
    else:
        raise InputError(f"--format expects labelstudio or doccano, found {fmt!r}")
    allowed = set(theme_ids) | ({NONE} if multi_label else set())
    rows, seen = [], set()
    for where, data, primary, secondary in annotated:
        if "pid" not in data or "text" not in data:
            raise InputError(f"{where}: expected the task's pid and text (export tasks with `pipeline label export`)")
        if len(primary) != 1:
            raise InputError(f"{where}: expected exactly one primary choice, found {primary}; fix the annotation")
        for label in primary + secondary:
            if label not in allowed:
                raise InputError(f"{where}: unknown theme {label!r}; expected one of {', '.join(sorted(allowed))}")
        secondary = [] if primary[0] == NONE else [t for t in secondary if t != primary[0]]
        if str(data["pid"]) in seen:
            raise InputError(f"{where}: paragraph {data['pid']} was annotated in an earlier task too; remove one of the two")
        seen.add(str(data["pid"]))
        rows.append({"id": data["pid"], "primary": primary[0], "secondary": secondary, "text": data["text"]})
    with runs.atomic_file(output) as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    return {"annotated": len(rows), "not_annotated": total - len(rows)}

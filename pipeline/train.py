"""train: fine-tune a BERT classifier on the prepared splits with transformers.Trainer.

Reads data.output_dir/{train,validation}.jsonl. Writes models/<run_name>/: model.safetensors,
config.json (id2label, label2id, problem_type, theme_thresholds), tokenizer files, config.yaml
(resolved), data.json (split hashes) and train_metrics.json, then points models/latest at it.

While training, checkpoints go to models/<run_name>.partial/checkpoints (at each epoch end and
every train.save_steps steps); an interrupted run (a crash, kill -9) continues from the last
complete one when the same command is run again. The run directory is staged in
models/<run_name>.partial/run and renamed into place only when complete, so models/latest never
points at a half-written run.

Runs unchanged under `torchrun --nproc_per_node N` or `accelerate launch` (data parallel, through
the Trainer): train.batch_size is the global batch, split across the processes; the main process
alone writes the run directory and repoints models/latest.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path

import numpy as np

from pipeline import blend, runs
from pipeline.config import Config, config_dict, save_config
from pipeline.data import NONE, file_sha256, load_split, resolve_schema
from pipeline.errors import ConfigError, InputError, PipelineError
from pipeline.metrics import choose_thresholds, membership, selection_score
from pipeline.model import SCORING_OVERLAP, build_classifier, encode_windows, mean_by_owner, resolve_precision, score_texts

log = logging.getLogger("pipeline")


def _targets(rows: list[dict], theme_ids: list[str], multi_label: bool, secondary_weight: float):
    """Multi-label: float vectors, 1 for the primary and `secondary_weight` for secondaries, so the
    top score learns to be the primary. Single-label: the primary's index."""
    index = {t: i for i, t in enumerate(theme_ids)}
    if not multi_label:
        return [index[r["primary"]] for r in rows]
    out = []
    for r in rows:
        vec = [0.0] * len(theme_ids)
        for t in r["secondary"]:
            vec[index[t]] = secondary_weight
        if r["primary"] != NONE:
            vec[index[r["primary"]]] = 1.0
        out.append(vec)
    return out


def _loss_with_class_weights(rows: list[dict], theme_ids: list[str], multi_label: bool):
    """A compute_loss_func for Trainer weighting rare themes up (inverse frequency, capped at 10)."""
    import torch

    if multi_label:
        positives = membership(rows, theme_ids).sum(axis=0).clip(min=1)
        pos_weight = torch.tensor(((len(rows) - positives) / positives).clip(1, 10), dtype=torch.float32)
        loss_fn = torch.nn.BCEWithLogitsLoss(pos_weight=pos_weight)
    else:
        counts = np.bincount([theme_ids.index(r["primary"]) for r in rows], minlength=len(theme_ids)).clip(min=1)
        weight = torch.tensor((counts.sum() / (len(counts) * counts)).clip(max=10), dtype=torch.float32)
        loss_fn = torch.nn.CrossEntropyLoss(weight=weight)

    def compute_loss(outputs, labels, num_items_in_batch=None):
        logits = outputs["logits"]
        loss_fn.to(logits.device)  # weights live where the model runs (CPU or GPU)
        return loss_fn(logits, labels.to(logits.dtype) if multi_label else labels)

    return compute_loss


def _callbacks(save_steps: int | None):
    """Trainer callbacks: per-process seeds, extra checkpoints, no pickles left in checkpoints."""
    from accelerate.utils import set_seed
    from transformers import TrainerCallback

    class PerProcessSeed(TrainerCallback):
        # Every process built the same model from cfg.seed. From here on each draws its own dropout
        # masks (seed + process index; process 0 keeps the single-process stream). The data order is
        # the Trainer's seeded sampler (data_seed), shared by all processes, each taking its own batches.
        # On resume the Trainer then restores each process's saved RNG state over this.
        def on_train_begin(self, args, state, control, **kwargs):
            set_seed(args.seed, device_specific=True)

    class SaveEvery(TrainerCallback):
        # Validation and model selection stay per epoch; these checkpoints only bound the work a crash
        # loses. An epoch's last step is skipped: the epoch-end checkpoint follows it, after validation.
        def on_step_end(self, args, state, control, **kwargs):
            if save_steps and state.global_step % save_steps == 0 and not float(state.epoch or 0).is_integer():
                control.should_save = True

    return [PerProcessSeed(), SaveEvery(), runs.no_pickled_args()]


def _length_grouped_sampler(lengths: list[int], batch_size: int, seed: int):
    """A sampler putting windows of similar length in the same batch, its order drawn from seed + epoch alone.

    The Trainer's own group_by_length sampler draws from the global RNG: processes, whose dropout seeds
    differ, would disagree on the order, and a resumed epoch would not replay the interrupted one's."""
    import torch
    from transformers import TrainerCallback
    from transformers.trainer_pt_utils import LengthGroupedSampler

    class EpochSeededLengthGroupedSampler(LengthGroupedSampler):
        epoch = 0

        def set_epoch(self, epoch: int) -> None:  # accelerate's data loader calls it at epoch starts
            self.epoch = epoch

        def __iter__(self):
            self.generator = torch.Generator().manual_seed(seed + self.epoch)  # the same order however often iterated
            return super().__iter__()

    class SetSamplerEpoch(TrainerCallback):
        # Accelerate's set_epoch does not reach the sampler through the extra wrapper a mid-epoch resume adds
        # under data parallelism (batches already trained are skipped): set it here, before each epoch's
        # batches are drawn. state.epoch is the epoch index then, or index + fraction done when resuming.
        def on_epoch_begin(self, args, state, control, **kwargs):
            sampler.set_epoch(int(state.epoch or 0))

    sampler = EpochSeededLengthGroupedSampler(batch_size, lengths=lengths)
    return sampler, SetSamplerEpoch()


def _trainer_class(sampler=None):
    """transformers.Trainer, or one that draws its training batches from `sampler`."""
    from transformers import Trainer

    if sampler is None:
        return Trainer

    class SampledTrainer(Trainer):
        def _get_train_sampler(self, train_dataset=None):
            # Per-process batches: under data parallelism each process takes every n-th batch of this order.
            return sampler

    return SampledTrainer


def _fingerprint(cfg: Config, data_dir: Path, processes: int) -> dict:
    """What decides the training trajectory: checkpoints are resumed only into an identical one."""
    recipe = config_dict(cfg)
    recipe["train"].pop("save_steps", None)  # how often it checkpoints does not change the result
    recipe["train"].pop("char_ngram_blend", None)  # fitted after the transformer: its checkpoints do not depend on it
    return {
        "config": recipe,
        "data_sha256": {name: file_sha256(data_dir / f"{name}.jsonl") for name in ("train", "validation")},
        "processes": processes,  # the global batch is split differently: steps and sampling change
        "examples": "windows",  # paragraphs were truncated before 26 Nov 2026: such checkpoints do not resume here
    }


def _differences(old, new, prefix: str = "") -> list[str]:
    """Config keys whose values differ, e.g. ["train.learning_rate: 0.001 then, 0.002 now"]."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [d for key in sorted(set(old) | set(new), key=str)
                for d in _differences(old.get(key), new.get(key), f"{prefix}{key}.")]
    return [] if old == new else [f"{prefix.rstrip('.')}: {old!r} then, {new!r} now"]


def _changes(saved: dict | None, now: dict, info: Path) -> str:
    """What differs between the fingerprint the checkpoints were made from and this run's, in a few words."""
    if not isinstance(saved, dict):
        return f"{info} is missing or unreadable"
    changes = _differences(saved.get("config"), now["config"])
    changes += [f"the {name} split changed" for name, sha in now["data_sha256"].items()
                if (saved.get("data_sha256") or {}).get(name) != sha]
    if saved.get("processes") != now["processes"]:
        changes.append(f"{saved.get('processes')} processes then, {now['processes']} now")
    return "; ".join(changes[:3]) + (f"; {len(changes) - 3} more" if len(changes) > 3 else "")


def _resume_point(work: Path, fingerprint: dict, resume: bool) -> Path | None:
    """The main process's side of resuming: drop checkpoints that cannot be resumed, record what the
    next ones are made from, and return the last complete checkpoint (None: start from the beginning)."""
    info = work / runs.RESUME_INFO
    processes = fingerprint["processes"]
    if work.exists():
        try:
            saved = runs.read_json(info)
        except PipelineError:
            saved = None  # killed before resume.json was written: nothing of this folder can be trusted
        if saved != fingerprint:
            changed = _changes(saved, fingerprint, info)
            if resume:
                raise PipelineError(
                    f"--resume: the checkpoints in {work} were made from a different config or data ({changed}); "
                    f"run with the config and data they were made from, or without --resume to start over"
                )
            if runs.checkpoints(work / runs.CHECKPOINTS):
                log.warning("%s: checkpoints from a different config or data (%s); starting over", work, changed)
            shutil.rmtree(work)
    for path in runs.discard_incomplete_checkpoints(work / runs.CHECKPOINTS, processes):
        log.warning("%s was not written completely (interrupted); removed it", path)
    checkpoint = runs.last_checkpoint(work / runs.CHECKPOINTS, processes)
    if resume and checkpoint is None:
        raise PipelineError(f"--resume: no complete checkpoint in {work / runs.CHECKPOINTS}; run without --resume to start training")
    if checkpoint is not None:
        from transformers.utils import is_torch_greater_or_equal

        if not is_torch_greater_or_equal("2.6"):
            # The Trainer loads optimizer, scheduler and RNG states with torch.load(weights_only=True),
            # which is only safe, and only allowed by transformers, from torch 2.6 on.
            raise PipelineError(f"resuming from {checkpoint} needs torch 2.6 or newer (safe loading); "
                                f"upgrade torch, or remove {work} to start over")
    shutil.rmtree(work / runs.STAGED, ignore_errors=True)  # a run directory half-written before a crash
    work.mkdir(parents=True, exist_ok=True)
    runs.write_json(info, fingerprint)
    return checkpoint


def train(cfg: Config, data_dir: str | None = None, resume: bool = False) -> Path:
    """Fine-tune per cfg and return the run directory. An interrupted run with the same config and data
    continues from its last complete checkpoint; resume=True insists on it (an error if there is none)."""
    import torch
    from datasets import Dataset
    from transformers import DataCollatorWithPadding, EarlyStoppingCallback, TrainingArguments, set_seed

    if cfg.run_name == runs.LATEST or cfg.run_name.endswith(runs.PARTIAL_SUFFIX):
        raise ConfigError(f"run_name {cfg.run_name!r} is reserved (the latest-run link, or a run's working folder); choose another")
    multi = cfg.train.mode == "multi_label"
    data_dir = Path(data_dir or cfg.data.output_dir)
    train_rows, val_rows = load_split(data_dir, "train"), load_split(data_dir, "validation")
    if not multi:  # a softmax over themes cannot say "none": those paragraphs are left out, and counted
        dropped = sum(r["primary"] == NONE for r in train_rows + val_rows)
        train_rows = [r for r in train_rows if r["primary"] != NONE]
        val_rows = [r for r in val_rows if r["primary"] != NONE]
        if dropped:
            log.warning("single_label mode: %d paragraphs without a label (none) left out of train/validation", dropped)
    if not train_rows or not val_rows:
        raise InputError(
            f"{data_dir}: train has {len(train_rows)} and validation {len(val_rows)} usable paragraphs; "
            f"expected at least one each: label more paragraphs or raise data.validation_fraction"
        )
    resolve_schema(cfg, data_dir)
    theme_ids = cfg.theme_ids
    unknown = sorted({t for r in train_rows + val_rows for t in [r["primary"], *r["secondary"]]} - {*theme_ids, NONE})
    if unknown:
        raise InputError(f"{data_dir} holds label {unknown[0]!r}, which the config's themes do not list "
                         f"({', '.join(theme_ids)}); run `pipeline prepare CONFIG` again after changing the themes")
    models_dir = Path(cfg.train.output_dir)
    if models_dir.exists() and not models_dir.is_dir():
        raise ConfigError(f"train.output_dir {models_dir} is a file; expected a folder for runs: choose another")
    final = models_dir / cfg.run_name
    work = runs.partial_dir(final)
    runs.check_replaceable(final, runs.RESOLVED_CONFIG)

    precision = resolve_precision(cfg.train.precision)
    args = TrainingArguments(  # under torchrun / accelerate launch this joins the process group
        output_dir=str(work / runs.CHECKPOINTS),
        num_train_epochs=cfg.train.epochs,
        per_device_train_batch_size=cfg.train.batch_size,  # set below, once the number of processes is known
        per_device_eval_batch_size=max(cfg.train.batch_size, 64),
        learning_rate=cfg.train.learning_rate,
        weight_decay=cfg.train.weight_decay,
        warmup_steps=cfg.train.warmup_ratio,  # a float below 1 is a ratio of total steps
        lr_scheduler_type="linear",
        eval_strategy="epoch",
        save_strategy="epoch",
        save_total_limit=1,  # plus the best one, which the Trainer keeps for load_best_model_at_end
        load_best_model_at_end=True,
        restore_callback_states_from_checkpoint=True,  # early stopping's patience count continues on resume
        metric_for_best_model="macro_f1",
        greater_is_better=True,
        logging_strategy="epoch",
        seed=cfg.seed,
        data_seed=cfg.seed,
        report_to=[],
        use_cpu=not torch.cuda.is_available(),
        bf16=precision == "bfloat16",  # autocast: about 1.65x faster fine-tuning on a 2-core AMX CPU
        disable_tqdm=not _is_tty(),
        dataloader_num_workers=0,
        # Our losses are means over the batch and ignore num_items_in_batch; averaging "tokens" across
        # processes would scale them by the number of processes (doubling the gradient on 2 GPUs).
        average_tokens_across_devices=False,
        ddp_find_unused_parameters=False,  # every parameter of the classifier gets a gradient
    )
    parts = args.world_size * max(args.n_gpu, 1)  # processes, times GPUs per process (DataParallel)
    if cfg.train.batch_size % parts:
        raise ConfigError(
            f"train.batch_size {cfg.train.batch_size} is the global batch, split evenly across {parts} processes/GPUs; "
            f"expected a multiple of {parts}: e.g. --set train.batch_size={cfg.train.batch_size // parts * parts or parts}"
        )
    args.per_device_train_batch_size = cfg.train.batch_size // parts
    main = args.process_index == 0  # the process that writes the run directory

    # Identical initial weights in every process: same seed, same tokenizer from the same text.
    set_seed(cfg.seed)
    tokenizer, model = build_classifier(cfg.model, theme_ids, multi, [r["text"] for r in train_rows])

    def encode(rows, overlap: int):
        # Paragraphs longer than the model's window are trained on as windows, each with the
        # paragraph's labels: nothing is cut off. Validation keeps the overlap evaluate and predict use.
        ids, owners = encode_windows(tokenizer, [r["text"] for r in rows], stride=overlap)
        targets = _targets(rows, theme_ids, multi, cfg.train.secondary_weight)
        return Dataset.from_dict({"input_ids": ids, "labels": [targets[o] for o in owners]}), np.asarray(owners)

    (train_ds, train_owners) = encode(train_rows, cfg.train.window_overlap)
    (val_ds, val_owners) = encode(val_rows, SCORING_OVERLAP)
    windows = {"train_windows": len(train_owners), "validation_windows": len(val_owners),
               "train_paragraphs_over_one_window": int((np.bincount(train_owners) > 1).sum())}
    if main:
        log.info("training on %d windows of %d paragraphs (%d longer than one %d-token window, split with %d tokens of overlap)",
                 len(train_owners), len(train_rows), windows["train_paragraphs_over_one_window"],
                 tokenizer.model_max_length, cfg.train.window_overlap)

    def compute_metrics(pred):
        # The Trainer gathers every process's predictions, in dataset order, without the padding copies:
        # the score is over the whole validation split, the same in each process. A paragraph's score
        # is the mean of its windows' probabilities, as in evaluate and predict.
        if len(pred.predictions) != len(val_owners):
            raise RuntimeError(f"validation predictions: {len(pred.predictions)}, expected {len(val_owners)} windows")
        logits = torch.tensor(pred.predictions, dtype=torch.float32)
        window_probs = (torch.sigmoid(logits) if multi else torch.softmax(logits, -1)).numpy()
        return {"macro_f1": selection_score(val_rows, mean_by_owner(window_probs, val_owners, len(val_rows)), theme_ids, multi)}

    start = time.time()
    try:
        # The main process cleans up first; the others then find the checkpoint it settled on.
        with args.main_process_first(local=False, desc="finding checkpoints"):
            fingerprint = _fingerprint(cfg, data_dir, args.world_size)
            if main:
                checkpoint = _resume_point(work, fingerprint, resume)
            else:
                checkpoint = runs.last_checkpoint(work / runs.CHECKPOINTS, args.world_size)
        if checkpoint is not None and main:
            log.info("resuming from %s (step %s)", checkpoint, checkpoint.name.rsplit("-", 1)[1])
        sampler, set_epoch = (None, None)
        if cfg.train.group_by_length:
            sampler, set_epoch = _length_grouped_sampler([len(x) for x in train_ds["input_ids"]],
                                                         args.train_batch_size * args.gradient_accumulation_steps, cfg.seed)
        trainer = _trainer_class(sampler)(
            model=model,
            args=args,
            train_dataset=train_ds,
            eval_dataset=val_ds,
            data_collator=DataCollatorWithPadding(tokenizer),
            processing_class=tokenizer,
            compute_metrics=compute_metrics,
            compute_loss_func=_loss_with_class_weights(train_rows, theme_ids, multi) if cfg.train.class_weights else None,
            callbacks=[EarlyStoppingCallback(early_stopping_patience=cfg.train.early_stopping_patience),
                       *_callbacks(cfg.train.save_steps), *([set_epoch] if set_epoch else [])],
        )
        result = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
        model = trainer.model.eval()  # the best epoch's weights (load_best_model_at_end), in every process
        staged = work / runs.STAGED
        ngrams, blend_info = None, None
        if main and (multi or cfg.train.char_ngram_blend):
            val_texts = [r["text"] for r in val_rows]
            val_probs, _ = score_texts(model, tokenizer, val_texts)
            if cfg.train.char_ngram_blend:
                ngrams, blend_info = _fit_blend(train_rows, val_rows, val_probs, theme_ids, multi)
                val_probs, _ = ngrams.scores(val_probs, val_texts)
            if multi:  # on the blend, the same thresholds blend.choose picked its share with
                model.config.theme_thresholds = choose_thresholds(val_probs, membership(val_rows, theme_ids), theme_ids)
        trainer.save_model(str(staged))  # every process calls it (sharded models gather); the main one writes
        if main:
            if ngrams is not None:
                blend.save(ngrams, staged)
            _write_run_files(staged, cfg, data_dir, trainer, result, train_rows, val_rows, windows, checkpoint, start,
                             blend_info)
            runs.check_replaceable(final, runs.RESOLVED_CONFIG)
            runs.publish_dir(staged, final)
            runs.point_latest(models_dir, final)
            shutil.rmtree(work, ignore_errors=True)
        trainer.accelerator.wait_for_everyone()  # the others return once the run directory is in place
    except OSError as e:
        raise PipelineError(
            f"training stopped: cannot write {e.filename or work} ({e.strerror or e}); free space or fix permissions, "
            f"then run the same command again: it continues from the last checkpoint in {work / runs.CHECKPOINTS}"
        ) from None
    return final


def _fit_blend(train_rows, val_rows, val_probs, theme_ids: list[str], multi: bool):
    """The character n-gram model fitted on the training rows, with the pooling and the transformer's share
    of the blend chosen on validation; and what train_metrics.json records of it."""
    log.info("fitting the character n-gram model for the blend (train.char_ngram_blend)")
    ngrams, by_pooling = blend.choose(blend.fit(train_rows, theme_ids, multi), val_rows, val_probs)
    share, pooling = ngrams.weight, ngrams.pooling
    others = ""
    for other, by_share in by_pooling.items():  # single-label runs try both poolings
        if other != pooling:
            best = max(by_share, key=lambda s: (round(by_share[s], 6), s))  # as choose breaks ties
            others = f"; the {other} pooling's best {by_share[best]:.3f} at {best:.1f}"
    log.info("blend: %s pooling, transformer share %.1f (validation score %.3f%s; transformer alone %.3f, n-gram model "
             "alone %.3f)", pooling, share, by_pooling[pooling][share], others, by_pooling[pooling][1.0], by_pooling[pooling][0.0])
    if multi:
        ngrams = ngrams._replace(transformer_thresholds=choose_thresholds(val_probs, membership(val_rows, theme_ids), theme_ids))
    return ngrams, {"transformer_share": share, "pooling": pooling, "none_threshold": ngrams.none_threshold,
                    "validation_score_by_pooling_and_share": by_pooling}


def _write_run_files(run_dir: Path, cfg: Config, data_dir: Path, trainer, result, train_rows, val_rows,
                     windows: dict, checkpoint: Path | None, start: float, blend_info: dict | None = None) -> None:
    (run_dir / runs.PICKLED_ARGS).unlink(missing_ok=True)  # a pickle: nothing in a run dir is unpickled
    for path in run_dir.iterdir():  # the Trainer's weights file is private (0600): a run is shared like any output
        if path.is_file():
            path.chmod(0o666 & ~runs.umask())
    save_config(cfg, run_dir / runs.RESOLVED_CONFIG)
    runs.write_json(run_dir / runs.DATA_INFO, {
        "data_dir": str(data_dir),
        "sha256": {name: file_sha256(data_dir / f"{name}.jsonl") for name in ("train", "validation", "test")},
        "train_paragraphs": len(train_rows),
        "validation_paragraphs": len(val_rows),
    })
    history = [e for e in trainer.state.log_history if "eval_macro_f1" in e]
    runs.write_json(run_dir / runs.TRAIN_METRICS, {
        "seed": cfg.seed,
        "processes": trainer.args.world_size,
        "precision": "bfloat16" if trainer.args.bf16 else "float32",
        "resumed_from_step": int(checkpoint.name.rsplit("-", 1)[1]) if checkpoint else None,
        "train_seconds": round(time.time() - start, 1),  # of this invocation, when resumed
        "train_loss": result.training_loss,  # mean over this invocation's steps
        "epochs_run": trainer.state.epoch,
        "best_validation_macro_f1": trainer.state.best_metric,
        "validation_history": [{"epoch": e["epoch"], "macro_f1": e["eval_macro_f1"]} for e in history],
        "thresholds": getattr(trainer.model.config, "theme_thresholds", None),
        "char_ngram_blend": blend_info,
        **windows,
    })


def _is_tty() -> bool:
    return os.isatty(2)

"""Run a recipe: tables -> datasets -> model -> fit -> run directory.

`fit_recipe` is what `keras-cxr fit` calls. A run directory holds:

- `best.keras`: the model with the best validation Macro-F1 (the SWA
  model when SWA is on and scores higher),
- `swa.keras`: the weight-averaged model, when SWA is on,
- `history.csv`, `curves.png`: per-epoch losses, val Macro-F1, learning rate,
- `val_probs.csv`: `best.keras`'s validation probabilities, CSV order,
- `metrics.json`, `confusion.png`: validation scores and timings,
- `reliability.png`: the reliability diagram of the validation
  probabilities, before and after temperature scaling,
- `calibration.json`: temperature scaling fitted on the validation rows
  (`keras_cxr.calibration`; `val_probs.csv` stays uncalibrated),
- `recipe.json`: the resolved recipe,
- `training_state.npz` while training runs: the snapshot of the last
  completed epoch that `fit_recipe(..., resume=True)` (`keras-cxr fit
  --resume`) continues from; deleted when the run finishes.

Data-parallel runs (an initialised `torch.distributed` process group, see
`keras_cxr.distributed`): every rank trains on its slice of each global
batch (`recipe.batch_size` is the global batch) with gradients averaged, and
only rank 0 writes the run directory.
"""

import contextlib
import json
import os
import pathlib
import time

import keras
import numpy as np
import pandas as pd

from keras_cxr import accel, models
from keras_cxr.callbacks import (
    SWA,
    AverageBatchNormStatistics,
    CollectCycles,
    EMAWarmup,
    MacroF1Checkpoint,
    NaNGuard,
    TrainingState,
    WarmupCosine,
)
from keras_cxr.config import ConfigError
from keras_cxr.data import CXRDataset, Table, TableError, drop_unreadable, read_table
from keras_cxr.distributed import context as distributed
from keras_cxr.distributed.batch_norm import synchronized_batch_norm
from keras_cxr.distributed.randomness import global_dropout_masks
from keras_cxr.distributed.train_step import data_parallel
from keras_cxr.errors import FieldError
from keras_cxr.evaluation import classification_summary
from keras_cxr.io import write_csv_atomic, write_json_atomic
from keras_cxr.losses import FocalLoss
from keras_cxr.models import pretrained
from keras_cxr.plots import plot_confusion_matrix, plot_history, plot_reliability
from keras_cxr.precision import set_precision
from keras_cxr.predict import predict_with_labels
from keras_cxr.predictor import mark_if_built_by_keras_cxr
from keras_cxr.probabilities import write_probabilities
from keras_cxr.seeding import set_seed


class RunDirectoryError(FieldError):
    """The output folder cannot be used (fields: `out_dir`, `overwrite`, `resume`)."""


_RUN_FIELDS = {"out_dir": "out_dir", "overwrite": "overwrite=True", "resume": "resume=True"}


def _run_directory_error(template):
    return RunDirectoryError(template, **{k: v for k, v in _RUN_FIELDS.items() if "{" + k + "}" in template})


class TrainingDiverged(RuntimeError):
    """The training loss became NaN or infinite; the message says where."""


class _TrainThroughput(keras.callbacks.Callback):
    """Training images per second, excluding the end-of-epoch validation."""

    def __init__(self, images_per_epoch):
        super().__init__()
        self.images_per_epoch = images_per_epoch
        self.seconds = 0.0
        self.epochs = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self._last = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds += self._last - self._start
        self.epochs += 1

    @property
    def images_per_second(self):
        return self.epochs * self.images_per_epoch / max(self.seconds, 1e-9)


STATE_FILE = "training_state.npz"


def prepare_run_directory(out_dir, overwrite=False):
    """Create `out_dir`, refusing to mix two runs' artifacts in one folder."""
    out = pathlib.Path(out_dir)
    if out.exists() and not out.is_dir():
        raise _run_directory_error(f"{{out_dir}} {out} exists and is not a folder")
    if (out / STATE_FILE).exists() and not overwrite:
        raise _run_directory_error(
            f"{{out_dir}} {out} holds an unfinished run ({STATE_FILE}); continue it with {{resume}}, "
            "or pass {overwrite} to start again"
        )
    if (out / "metrics.json").exists() and not overwrite:
        raise _run_directory_error(
            f"{{out_dir}} {out} already holds a finished run (metrics.json); "
            "choose another folder or pass {overwrite}"
        )
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise _run_directory_error(f"{{out_dir}} {out} is not writable: {e.strerror or e}") from None
    return out


def check_resumable(recipe, out_dir):
    """The run folder to continue: it must hold an unfinished run of the same recipe."""
    out = pathlib.Path(out_dir)
    if not out.is_dir():
        raise _run_directory_error(f"{{resume}}: {out} does not exist; start the run without {{resume}}")
    if (out / "metrics.json").exists():
        raise _run_directory_error(f"{{resume}}: {out} holds a finished run (metrics.json); nothing to continue")
    if not (out / STATE_FILE).exists():
        raise _run_directory_error(
            f"{{resume}}: {out} has no {STATE_FILE}, so no epoch was completed; "
            "start again without {resume} (add {overwrite} if the folder is not empty)"
        )
    try:
        saved = json.loads((out / "recipe.json").read_text())
    except (OSError, ValueError) as e:
        raise _run_directory_error(f"{{resume}}: cannot read {out / 'recipe.json'}: {e}") from None
    current = json.loads(json.dumps(recipe.to_dict()))
    changed = _differences(saved, current)
    if changed:
        raise _run_directory_error(
            f"{{resume}}: the recipe differs from the run's recipe.json in {', '.join(changed)}; "
            "resume with the same recipe file and options"
        )
    return out


def _differences(saved, current, prefix=""):
    if isinstance(saved, dict) and isinstance(current, dict):
        keys = sorted(set(saved) | set(current))
        return [d for k in keys for d in _differences(saved.get(k), current.get(k), f"{prefix}{k}.")]
    return [] if saved == current else [f"{prefix[:-1]} ({saved!r} -> {current!r})"]


def resolve_data_dir(data):
    """The recipe's data folder, or the embedded synthetic data set."""
    if data.data_dir is not None:
        return pathlib.Path(data.data_dir)
    from keras_cxr.data.synthetic import ensure_default_dataset

    return pathlib.Path(ensure_default_dataset())


def load_tables(data, verbose=0):
    """The training table (with `data.extra_train` appended), the validation table and the skipped images.

    Every image is decoded once first (`data.on_bad_image`): unreadable ones
    stop the run here, before any training, or are left out and listed.
    """
    if data.tfds_dir is not None:
        return _tfds_tables(data) + ([],)
    root = resolve_data_dir(data)
    kwargs = dict(
        images_dir=root / data.images_dir,
        class_names=data.class_names,
        filename_column=data.filename_column,
        labels="required",
    )
    train = read_table(root / data.train_csv, **kwargs)
    val = read_table(root / data.val_csv, **kwargs)
    extras = [read_table(root / csv, **kwargs) for csv in data.extra_train]
    check_disjoint([val, train, *extras])
    if verbose:
        print(f"Checking {sum(map(len, [train, val, *extras]))} images.")
    skipped = []
    checked = []
    for table in (train, val, *extras):
        table, dropped = drop_unreadable(table, data.on_bad_image, workers=max(2, data.workers), verbose=verbose)
        checked.append(table)
        skipped += dropped
    train, val, *extras = checked
    if extras:
        train = Table.concat([train, *extras])
    return train, val, skipped


def _tfds_tables(data):
    """The training and validation tables of `data.tfds_dir` (see `keras_cxr.recipe.Data`)."""
    from keras_cxr.data.tfds import read_tfds_table

    tables = []
    for csv in (data.train_csv, data.val_csv):
        split = csv.removesuffix(".csv")
        table = read_tfds_table(data.tfds_dir, split, labels="required")
        if table.class_names != tuple(data.class_names):
            raise ConfigError(f"Data.tfds_dir {data.tfds_dir}: its {split!r} split has classes "
                              f"{', '.join(table.class_names)}, the recipe {', '.join(data.class_names)}")
        tables.append(table)
    check_disjoint(tables[::-1])
    return tuple(tables)


def check_disjoint(tables):
    """Refuse an image that sits in two of `tables` (e.g. pseudo-labels of validation images)."""
    seen = {}
    for table in tables:
        for path in table.paths:
            if path in seen:
                raise TableError([f"{table.csv_path}: image {path} is also in {seen[path]}; "
                                  "a row may sit in only one of the training, extra and validation tables"])
            seen[path] = table.csv_path


def make_optimizer(config):
    common = dict(
        learning_rate=config.learning_rate,
        use_ema=config.ema,
        ema_momentum=config.ema_momentum,
        clipnorm=config.clipnorm,
    )
    if config.name == "adamw":
        return keras.optimizers.AdamW(weight_decay=config.weight_decay, **common)
    if config.name == "adam":
        return keras.optimizers.Adam(**common)
    return keras.optimizers.SGD(momentum=0.9, nesterov=True, weight_decay=config.weight_decay, **common)


def make_datasets(recipe, train_table, val_table, image_size, shard=None):
    """The training and validation `CXRDataset`s of `recipe`; `shard`: this rank's share (data-parallel runs)."""
    data = recipe.data
    loader = dict(workers=data.workers, use_multiprocessing=data.use_multiprocessing, cache=data.cache, shard=shard)
    train = CXRDataset(
        train_table,
        image_size,
        batch_size=recipe.batch_size,
        training=True,
        augmentation=recipe.augmentation,
        mixing=recipe.mixing,
        sampling=recipe.sampling,
        seed=recipe.seed,
        **loader,
    )
    val = CXRDataset(
        val_table,
        image_size,
        batch_size=recipe.batch_size,
        training=False,
        augmentation=recipe.augmentation,
        **loader,
    )
    return train, val


def build_model(recipe, num_classes):
    config = recipe.model
    return models.build(
        config.name,
        num_classes=num_classes,
        image_size=config.image_size,
        dropout=config.dropout,
        weights=config.weights,
    )


def fetch_pretrained(config, verbose=1):
    """Before anything is written: the pretrained weights `config` starts from, fetched into the cache if missing.

    Args:
        config: a recipe's `Model`; only `weights="imagenet"` needs anything.
        verbose: 0 hides the download progress.

    Raises:
        keras_cxr.models.pretrained.WeightsUnavailable: neither cached nor
            downloadable (the message names the URL or preset, the cache
            path and the ways out).
    """
    if config.weights == "imagenet" and pretrained.requirement(config.name) is not None:
        pretrained.ensure(config.name, verbose)


def check_checkpoint(config):
    """Before anything is written: a PyTorch checkpoint in `config.weights` fits the model at the recipe's size.

    The model is built at `config.image_size`, as `fit` will build it: a
    checkpoint can fix the smallest size (Swin's window: 224 px for swin_t).

    Args:
        config: a recipe's `Model`; only a `.pt` / `.pth` / `.bin` file in
            `weights` is checked.

    Raises:
        keras_cxr.models.torch_weights.CheckpointError: the file is no
            weights-only state_dict, or its keys do not fit (named).
        ValueError: the model cannot load PyTorch checkpoints.
    """
    from keras_cxr.models import weights as weights_lib

    path = config.weights
    if isinstance(path, str) and path.endswith(weights_lib.TORCH_SUFFIXES) and os.path.isfile(path):
        models.build(config.name, image_size=config.image_size, weights=path)


def _restore(state):
    try:
        return state.restore()
    except Exception as e:  # noqa: BLE001  - a damaged or foreign snapshot, whatever the reader raised
        raise _run_directory_error(
            f"{{resume}}: {state.filepath} cannot be used ({type(e).__name__}: {e}); "
            "start the run again with {overwrite}"
        ) from None


def _divergence_message(guard, checkpoint, steps_per_epoch, best_path):
    where = f"the training loss became {guard.loss} at epoch {guard.epoch}, step {guard.step} of {steps_per_epoch}"
    if checkpoint.best is None:
        kept = "no checkpoint had been saved yet"
    else:
        kept = (f"{best_path} (epoch {checkpoint.best_epoch + 1}, val Macro-F1 {checkpoint.best:.4f}) "
                "is intact")
    return (f"training stopped: {where}; {kept}. Lower optimizer.learning_rate, set optimizer.clipnorm, "
            "or use precision=float32.")


def fit_recipe(recipe, out_dir, verbose=1, overwrite=False, resume=False, accelerate=True, sync_batch_norm=False):
    """Train `recipe` and write its run directory; returns the metrics dict.

    With `resume=True`, continue the unfinished run in `out_dir` from its last
    completed epoch (`training_state.npz`); the recipe must equal the run's
    `recipe.json`. The continued run ends with the same weights and
    probabilities as an uninterrupted one. With `accelerate=True` the run
    has `keras_cxr.accel` on (and off again after), unless it is on already.

    In a data-parallel process group (`keras_cxr.distributed.initialize()`
    on every rank, e.g. under torchrun) every rank calls this with the same
    arguments: `recipe.batch_size` is the global batch (it must divide by the
    number of ranks), gradients are averaged at every step, dropout masks
    are drawn for the global batch, BatchNormalization uses per-rank batch
    statistics averaged at each epoch end, or the global batch's with
    `sync_batch_norm=True`; rank 0 writes the run directory and returns the
    metrics, the other ranks return `None`. A resumed run needs the same
    number of ranks and `sync_batch_norm`.
    """
    context = distributed.current()
    sync = context if sync_batch_norm else None
    with (accel.enabled() if accelerate else contextlib.nullcontext()), global_dropout_masks(context), \
            synchronized_batch_norm(sync):
        return _fit_recipe(recipe, out_dir, verbose, overwrite, resume, context, bool(sync))


def _calibrate_on_validation(out, val_table, val_probs, val_ids, class_names):
    """Fit temperature scaling on the validation rows; write calibration.json and reliability.png.

    Returns the validation ECE/Brier/NLL before and after (in-sample and
    cross-validated) and the temperature, for metrics.json.
    """
    from keras_cxr.calibration import fit_calibration
    from keras_cxr.probabilities import Probabilities

    values = np.asarray(val_probs, dtype=np.float64)
    probs = Probabilities(str(out / "val_probs.csv"), val_table.filenames, values / values.sum(axis=1, keepdims=True),
                          tuple(class_names))
    calibration, report = fit_calibration(probs, val_ids)
    calibration.save(out / "calibration.json", report)
    plot_reliability(val_ids, probs.values, out / "reliability.png", calibrated=calibration.apply(probs.values),
                     labels=("validation", f"after {calibration.describe()} (in-sample)"))
    return {key: report[key] for key in ("method", "parameters", "before", "in_sample", "cross_validated", "cv_folds")}


def _environment():
    """What the run ran on, for its report."""
    import platform

    import torch

    from keras_cxr import __version__

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU, {os.cpu_count()} cores"
    return {"keras_cxr": __version__, "keras": keras.__version__, "torch": torch.__version__,
            "python": platform.python_version(), "platform": platform.platform(), "device": device,
            "torch_threads": torch.get_num_threads()}


def _open_run_directory(recipe, out_dir, overwrite, resume):
    """The run directory, checked (and made) for this run; rank 0's work alone in a data-parallel run."""
    if resume:
        if overwrite:
            raise _run_directory_error("{resume} and {overwrite} cannot be combined")
        out = check_resumable(recipe, out_dir)
    else:
        out = prepare_run_directory(out_dir, overwrite=overwrite)
    if recipe.data.data_dir is None and recipe.data.tfds_dir is None:
        resolve_data_dir(recipe.data)  # generates the embedded data set once, before other ranks read it
    return out


def _start_run(recipe, out):
    """Once the data have been read: replace a previous run's snapshot and record the recipe."""
    (out / STATE_FILE).unlink(missing_ok=True)  # left by an unfinished run that --overwrite replaces
    write_json_atomic(recipe.to_dict(), out / "recipe.json")


def _fit_recipe(recipe, out_dir, verbose, overwrite, resume, context, sync_batch_norm):
    started = time.perf_counter()
    world_size = 1 if context is None else context.world_size
    main = context is None or context.is_main
    verbose = verbose if main else 0
    if recipe.batch_size % world_size:
        raise ConfigError(f"Recipe.batch_size: {recipe.batch_size} is the global batch and must divide by the "
                          f"{world_size} ranks")
    on_main = (lambda function: function()) if context is None else context.on_main
    on_main(lambda: fetch_pretrained(recipe.model, verbose))
    on_main(lambda: check_checkpoint(recipe.model))
    out = on_main(lambda: _open_run_directory(recipe, out_dir, overwrite, resume))
    train_table, val_table, skipped_images = load_tables(recipe.data, verbose=verbose)
    if skipped_images and verbose:
        print(f"Skipping {len(skipped_images)} unreadable images (listed in metrics.json).")
    class_names = recipe.data.class_names
    if not resume:
        on_main(lambda: _start_run(recipe, out))

    set_seed(recipe.seed)
    precision = set_precision(recipe.precision)
    if verbose and recipe.precision == "auto" and precision == "mixed_bfloat16":
        print("Precision: mixed_bfloat16 (auto: this CPU has bfloat16 instructions; "
              "KERAS_CXR_CPU_BFLOAT16=0 keeps float32).")
    model = build_model(recipe, len(class_names))
    image_size = int(model.input_shape[1])
    train_data, val_data = make_datasets(recipe, train_table, val_table, image_size, shard=context)

    model.compile(
        optimizer=make_optimizer(recipe.optimizer),
        loss=FocalLoss(
            alpha=recipe.loss.alpha,
            gamma=recipe.loss.gamma,
            label_smoothing=recipe.loss.label_smoothing,
        ),
    )
    data_parallel(model, context)

    best_path = out / "best.keras"
    checkpoint = MacroF1Checkpoint(val_data, filepath=str(best_path) if main else None, verbose=verbose)
    throughput = _TrainThroughput(len(train_table))
    guard = NaNGuard()
    callbacks = [
        guard,
        WarmupCosine(
            recipe.optimizer.learning_rate,
            warmup_epochs=recipe.schedule.warmup_epochs,
            min_lr=recipe.schedule.min_lr,
        ),
        *([EMAWarmup()] if recipe.optimizer.ema else []),
        throughput,
        train_data.epoch_callback(),
        *([] if context is None else [AverageBatchNormStatistics(context)]),
        checkpoint,
    ]
    early_stopping = None
    if recipe.early_stopping.patience is not None:
        early_stopping = keras.callbacks.EarlyStopping(
            monitor="val_macro_f1",
            mode="max",
            patience=recipe.early_stopping.patience,
            min_delta=recipe.early_stopping.min_delta,
        )
        callbacks.append(early_stopping)
    # SWA goes last: its constant learning rate overrides WarmupCosine's, and
    # its end-of-training weights must not be overwritten by another callback.
    swa = None
    if recipe.swa.start_epoch is not None:
        swa = SWA(
            start_epoch=recipe.swa.start_epoch - 1,
            swa_lr=recipe.swa.learning_rate,
            bn_data=train_data,
            validation_data=val_data,
            filepath=str(out / "swa.keras") if main else None,
            checkpoint=checkpoint,
            verbose=verbose,
        )
        callbacks.append(swa)
    # Last, so it restores the others after they reset and saves what they recorded.
    run_facts = {"world_size": world_size, "sync_batch_norm": sync_batch_norm}
    state = TrainingState(out / STATE_FILE, checkpoint=checkpoint, swa=swa, early_stopping=early_stopping,
                          run=run_facts, write=main)
    callbacks.append(state)

    # Keras builds compiled metrics by pulling one batch; with loader workers
    # the batches prefetched then would leak into the first epoch, so build
    # them here on a validation batch.
    model.evaluate(*val_data[0][:2], verbose=0)
    state.set_model(model)
    initial_epoch = _restore(state) if resume else 0
    if verbose and initial_epoch:
        print(f"Resuming {out} after epoch {initial_epoch} of {recipe.epochs}.")
    # The dataset draws its own seeded order each epoch; Keras's shuffle would
    # reorder batches with the unseeded global RNG.
    collect_cycles = CollectCycles()
    try:
        model.fit(train_data, epochs=recipe.epochs, initial_epoch=initial_epoch,
                  callbacks=[*callbacks, collect_cycles], verbose=verbose, shuffle=False)
    finally:
        collect_cycles.release()
    if not main:
        return None  # rank 0 alone writes the results, with no collective after this point
    if context is not None:
        val_data = make_datasets(recipe, train_table, val_table, image_size)[1]
    history_frame = pd.DataFrame(state.history)  # every epoch, those before a resume included
    history_frame.insert(0, "epoch", np.arange(1, len(history_frame) + 1))
    write_csv_atomic(history_frame, out / "history.csv")
    plot_history(history_frame.drop(columns="epoch").to_dict("list"), out / "curves.png")
    if guard.tripped:
        raise TrainingDiverged(_divergence_message(guard, checkpoint, len(train_data), best_path))

    best = mark_if_built_by_keras_cxr(keras.saving.load_model(best_path))
    val_probs, val_targets = predict_with_labels(best, val_data)
    write_probabilities(out / "val_probs.csv", val_table.filenames, val_probs, class_names, recipe.data.filename_column)
    summary = classification_summary(val_targets.argmax(axis=1), val_probs, class_names)
    plot_confusion_matrix(summary["confusion_matrix"], class_names, out / "confusion.png",
                          title=f"validation, Macro-F1 {summary['macro_f1']:.3f}")
    calibration = _calibrate_on_validation(out, val_table, val_probs, val_targets.argmax(axis=1), class_names)

    metrics = {
        "best_epoch": checkpoint.best_epoch + 1 if checkpoint.best_source == "epoch" else None,
        "best_source": checkpoint.best_source,
        "val_macro_f1": summary["macro_f1"],
        "validation": summary,
        "calibration": calibration,
        "swa": None if swa is None else {"val_macro_f1": swa.swa_score, "models_averaged": swa.n_averaged, "used": swa.used},
        "epochs_run": len(history_frame),
        "resumed_after_epoch": initial_epoch or None,
        "precision": precision,
        **run_facts,
        "image_size": image_size,
        "train_images": len(train_table),
        "val_images": len(val_table),
        "skipped_images": skipped_images,
        "train_images_per_second": throughput.images_per_second,
        "seconds": time.perf_counter() - started,
        "environment": _environment(),
    }
    write_json_atomic(metrics, out / "metrics.json")
    (out / STATE_FILE).unlink(missing_ok=True)
    return metrics

"""The training recipe: one typed schema, loaded from a Python file.

A recipe file is plain Python that defines ``recipe = Recipe(...)``::

    from keras_cxr.recipe import Recipe, Model, Optimizer

    recipe = Recipe(model=Model(name="effv2_s", image_size=384), epochs=45)

Every field below is read by `keras_cxr.training.fit_recipe`; an unknown
field is an error that names it and suggests the closest known one.
"""

import ast
import dataclasses
import pathlib
import re
import runpy
import traceback
import typing

from keras_cxr.constants import CLASS_NAMES
from keras_cxr.config import Config, ConfigError, unknown_field_error
from keras_cxr.data.augment import Augmentation
from keras_cxr.data.mixing import Mixing

Precision = typing.Literal["auto", "float32", "mixed_float16", "mixed_bfloat16"]


@dataclasses.dataclass(frozen=True)
class Data(Config):
    """Where the training and validation tables are.

    Args:
        data_dir: folder holding `train_csv`, `val_csv` and `images_dir`.
            None trains on the embedded synthetic data set (no download).
        train_csv, val_csv: table file names inside `data_dir`.
        images_dir: image folder inside `data_dir` (rows with a
            `source_dir` column use that instead).
        extra_train: more labeled tables added to the training rows (e.g.
            `keras-cxr pseudo-label` output), absolute or relative to
            `data_dir`; their `sample_weight` column weights the loss.
        filename_column: the CSV column holding image file names.
        class_names: the one-hot label columns, in model output order.
        cache: keep decoded, resized images in memory after the first epoch.
        workers: `keras.utils.PyDataset` loader workers (0 or 1: in-process).
        use_multiprocessing: loader workers are processes, not threads.
        on_bad_image: every image is decoded once before training;
            ``"error"`` stops with a list of the unreadable files,
            ``"skip"`` trains without them and lists them in `metrics.json`.
        tfds_dir: instead of `data_dir`, a TFDS build (`keras-cxr tfds
            build`): its splits named like `train_csv` and `val_csv` without
            ``.csv`` are the training and validation rows, and its images
            are read from the records (every one was decoded when the build
            was made). Not with `extra_train` or `use_multiprocessing`.
    """

    data_dir: str | None = None
    train_csv: str = "train.csv"
    val_csv: str = "val.csv"
    images_dir: str = "images"
    extra_train: tuple[str, ...] = ()
    filename_column: str = "new_filename"
    class_names: tuple[str, ...] = CLASS_NAMES
    cache: bool = True
    workers: int = 1
    use_multiprocessing: bool = False
    on_bad_image: typing.Literal["error", "skip"] = "error"
    tfds_dir: str | None = None

    def validate(self):
        if len(self.class_names) < 2 or len(set(self.class_names)) != len(self.class_names):
            raise ConfigError(f"Data.class_names must be 2+ distinct names, got {self.class_names}")
        if self.workers < 0:
            raise ConfigError(f"Data.workers must be >= 0, got {self.workers}")
        if self.tfds_dir is not None:
            for name, value in (("data_dir", self.data_dir), ("extra_train", self.extra_train),
                                ("use_multiprocessing", self.use_multiprocessing)):
                if value:
                    raise ConfigError(f"Data.tfds_dir trains from a TFDS build: Data.{name} cannot be set with it "
                                      f"(got {value!r})")


@dataclasses.dataclass(frozen=True)
class Model(Config):
    """The network: see `keras-cxr models` for names, sizes and dropouts.

    Args:
        name: a name from `keras_cxr.models.names()`.
        image_size: input side in pixels; None takes the model's default.
        dropout: head dropout; None takes the model's default.
        weights: None (random init), "imagenet", a keras-hub preset folder,
            a `.weights.h5` file, or a PyTorch `state_dict` (`.pt`, `.pth`,
            `.bin`) for `densenet121` / `densenet121_xrv`.
    """

    name: str = "cxr_resnet"
    image_size: int | None = None
    dropout: float | None = None
    weights: str | None = None

    def validate(self):
        from keras_cxr import models

        if self.name not in models.names():
            raise ConfigError(
                f"Model.name: unknown model {self.name!r}; known: {', '.join(models.names())}"
            )
        if self.image_size is not None and self.image_size < 16:
            raise ConfigError(f"Model.image_size must be >= 16, got {self.image_size}")
        if self.dropout is not None and not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"Model.dropout must be in [0, 1), got {self.dropout}")


@dataclasses.dataclass(frozen=True)
class Loss(Config):
    """Focal loss settings (`keras_cxr.losses.FocalLoss`).

    Args:
        alpha: per-class weights in `Data.class_names` order, or None.
        gamma: focusing exponent; 0 gives label-smoothed cross-entropy.
        label_smoothing: mass moved from the true class to the others.
    """

    alpha: tuple[float, ...] | None = None
    gamma: float = 0.0
    label_smoothing: float = 0.0

    def validate(self):
        if self.gamma < 0:
            raise ConfigError(f"Loss.gamma must be >= 0, got {self.gamma}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ConfigError(f"Loss.label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.alpha is not None and any(a <= 0 for a in self.alpha):
            raise ConfigError(f"Loss.alpha must be positive, got {self.alpha}")


@dataclasses.dataclass(frozen=True)
class Optimizer(Config):
    """AdamW (or Adam / SGD with Nesterov momentum).

    Args:
        name: "adamw", "adam" or "sgd".
        learning_rate: peak learning rate reached after warmup.
        weight_decay: decoupled weight decay (AdamW, SGD).
        ema: keep an exponential moving average of the weights
            (`use_ema`); checkpoints and SWA then use the averaged weights.
        ema_momentum: the average's momentum, reached after a warmup
            (`min(ema_momentum, (1 + step) / (10 + step))`, the
            `EMAWarmup` callback) so that short runs do not keep their
            first weights in the average.
        clipnorm: clip each gradient to this norm; None for no clipping.
    """

    name: typing.Literal["adamw", "adam", "sgd"] = "adamw"
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    ema: bool = False
    ema_momentum: float = 0.999
    clipnorm: float | None = None

    def validate(self):
        if self.learning_rate <= 0:
            raise ConfigError(f"Optimizer.learning_rate must be > 0, got {self.learning_rate}")
        if not 0.0 < self.ema_momentum < 1.0:
            raise ConfigError(f"Optimizer.ema_momentum must be in (0, 1), got {self.ema_momentum}")


@dataclasses.dataclass(frozen=True)
class Schedule(Config):
    """Per-step linear warmup, then cosine decay to a floor.

    Args:
        warmup_epochs: length of the linear warmup (fractions allowed).
        min_lr: the learning rate at the last step.
    """

    warmup_epochs: float = 0.0
    min_lr: float = 1e-6


@dataclasses.dataclass(frozen=True)
class SWA(Config):
    """Stochastic weight averaging.

    Args:
        start_epoch: first epoch (1-based, as Keras prints it) whose end
            weights enter the average; None turns SWA off.
        learning_rate: constant learning rate from `start_epoch` on; None
            keeps the warmup-cosine schedule.
    """

    start_epoch: int | None = None
    learning_rate: float | None = None


@dataclasses.dataclass(frozen=True)
class EarlyStopping(Config):
    """Stop when validation Macro-F1 stops improving.

    Args:
        patience: epochs without improvement before stopping; None: never.
        min_delta: the smallest change that counts as an improvement.
    """

    patience: int | None = None
    min_delta: float = 1e-4


@dataclasses.dataclass(frozen=True)
class Recipe(Config):
    """A complete training run.

    Args:
        data, model, augmentation, mixing, loss, optimizer, schedule, swa,
        early_stopping: the sections above.
        sampling: "balanced" (weight N / class count), "sqrt" or "none".
        precision: "auto" (mixed_float16 on a CUDA GPU, mixed_bfloat16 on
            a CPU with bfloat16 instructions, else float32; see
            `keras_cxr.precision`), "float32", "mixed_float16" or
            "mixed_bfloat16".
        epochs: maximum number of epochs.
        batch_size: images per step.
        seed: seeds sampling, augmentation and weight initialisation.
        output: run directory used when no other is given (`fit_recipe`'s `out_dir`).
    """

    data: Data = Data()
    model: Model = Model()
    augmentation: Augmentation = Augmentation()
    mixing: Mixing = Mixing()
    sampling: typing.Literal["balanced", "sqrt", "none"] = "balanced"
    loss: Loss = Loss()
    optimizer: Optimizer = Optimizer()
    schedule: Schedule = Schedule()
    swa: SWA = SWA()
    early_stopping: EarlyStopping = EarlyStopping()
    precision: Precision = "auto"
    epochs: int = 10
    batch_size: int = 32
    seed: int = 42
    output: str = "runs/recipe"

    def validate(self):
        if self.epochs < 1:
            raise ConfigError(f"Recipe.epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1:
            raise ConfigError(f"Recipe.batch_size must be >= 1, got {self.batch_size}")
        if self.loss.alpha is not None and len(self.loss.alpha) != len(self.data.class_names):
            raise ConfigError(
                f"Loss.alpha has {len(self.loss.alpha)} values but Data.class_names has "
                f"{len(self.data.class_names)} classes"
            )
        if self.swa.start_epoch is not None and not 1 <= self.swa.start_epoch <= self.epochs:
            raise ConfigError(
                f"SWA.start_epoch must be between 1 and epochs={self.epochs}, got {self.swa.start_epoch} "
                "(with fewer epochs, also set {swa_off} or an earlier epoch)",
                swa_off="swa.start_epoch=None",
            )


def load_recipe(path):
    """Run a recipe file and return the `Recipe` it defines as `recipe`."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise ConfigError(f"recipe file not found: {path}")
    try:
        namespace = runpy.run_path(str(path))
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
    except TypeError as e:
        raise ConfigError(f"{path}: {_explain_type_error(e)}") from None
    except SyntaxError as e:
        raise ConfigError(f"{path} line {e.lineno}: {e.msg} (the recipe is not valid Python)") from None
    except Exception as e:  # noqa: BLE001  - the recipe is user code; name its line, not our stack
        raise ConfigError(f"{path}{_line_in(path, e)}: running the recipe raised {type(e).__name__}: {e}") from None
    recipe = namespace.get("recipe")
    if not isinstance(recipe, Recipe):
        raise ConfigError(f"{path} must define `recipe = Recipe(...)`; found {type(recipe).__name__}")
    return recipe


def _line_in(path, error):
    """`" line N"` of the innermost frame of `error`'s traceback that is in `path`, or ""."""
    line = ""
    for frame, lineno in traceback.walk_tb(error.__traceback__):
        if pathlib.Path(frame.f_code.co_filename).resolve() == path.resolve():
            line = f" line {lineno}"
    return line


def _sections():
    found, todo = {}, [Recipe]
    while todo:
        cls = todo.pop()
        found[cls.__name__] = cls
        hints = typing.get_type_hints(cls)
        todo += [t for t in hints.values() if isinstance(t, type) and issubclass(t, Config)]
    return found


def _explain_type_error(error):
    """Turn dataclass "unexpected keyword argument" errors into field errors."""
    match = re.search(r"(\w+)\.__init__\(\) got an unexpected keyword argument '(\w+)'", str(error))
    cls = _sections().get(match.group(1)) if match else None
    if cls is None:
        return str(error)
    return str(unknown_field_error(cls, match.group(2), ""))


def parse_value(text):
    """Read an override's value: Python/JSON literals, else the bare string."""
    lowered = text.strip().lower()
    if lowered in ("none", "null"):
        return None
    if lowered in ("true", "false"):
        return lowered == "true"
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def apply_overrides(recipe, assignments):
    """Apply ``dotted.key=value`` strings (the CLI's ``--set``); later ones win.

    Raises:
        ConfigError: a malformed assignment or an unknown key; its field
            `assignments` names this argument.
    """
    values = {}
    for assignment in assignments:
        key, sep, value = assignment.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"{{assignments}} expects dotted.key=value, got {assignment!r}", assignments="assignments")
        try:
            Recipe._field_type(key)
        except ConfigError as e:
            raise ConfigError(f"{{assignments}} {assignment}: {e}", assignments="assignments") from None
        values[key] = parse_value(value)
    return recipe.with_values(values)


def seed_recipe(**changes):
    """The seed report's GPU recipe, with `changes` applied.

    EfficientNetV2-S at 384 px from ImageNet weights; rotation 10, translate
    8%, scale 0.92-1.08, shear 12, brightness/contrast 0.2, random erasing
    0.35; Mixup (p 0.6, alpha 1.2) and CutMix (p 0.5, alpha 1.0); balanced
    sampling; focal alpha [1, 1.5, 2, 12], gamma 3.5, smoothing 0.12; AdamW
    8e-5, weight decay 1.5e-4, batch 24, 45 epochs, 6 warmup epochs then
    cosine to 1e-6; early stopping patience 12; SWA from epoch 35.

    Example:

    ```python
    recipe = seed_recipe(model=Model(name="swin_l", image_size=384, weights="imagenet"))
    ```
    """
    base = Recipe(
        model=Model(name="effv2_s", image_size=384, dropout=0.25, weights="imagenet"),
        augmentation=Augmentation(
            rotation=10.0, translate=0.08, scale=(0.92, 1.08), shear=12.0,
            brightness=0.2, contrast=0.2, erasing_p=0.35,
        ),
        mixing=Mixing(mixup_p=0.6, mixup_alpha=1.2, cutmix_p=0.5, cutmix_alpha=1.0),
        sampling="balanced",
        loss=Loss(alpha=(1.0, 1.5, 2.0, 12.0), gamma=3.5, label_smoothing=0.12),
        optimizer=Optimizer(name="adamw", learning_rate=8e-5, weight_decay=1.5e-4),
        schedule=Schedule(warmup_epochs=6, min_lr=1e-6),
        swa=SWA(start_epoch=35),
        early_stopping=EarlyStopping(patience=12, min_delta=1e-4),
        precision="auto",
        epochs=45,
        batch_size=24,
        seed=42,
        output="runs/seed",
    )
    return base.replace(**changes)

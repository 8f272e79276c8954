"""Save everything `fit` needs to continue after the last completed epoch."""

import io
import json
import math
import random

import keras
import numpy as np

from keras_cxr.io import atomic_write

# 2: images augmented from per-image random streams (keras-cxr 0.x, data-parallel training); world size recorded.
_FORMAT = 2


class TrainingState(keras.callbacks.Callback):
    """Write a resumable snapshot of training at the end of every epoch.

    One file (`.npz`, replaced atomically, so a crash leaves the previous
    epoch's snapshot whole) holds:

    - every model variable (weights, BatchNormalization statistics, dropout
      seed states) and every optimizer variable (step count, moments, EMA
      copies, loss scale), as stored, so the continued run computes with
      exactly the same numbers;
    - the Python, NumPy and torch random generator states (unseeded dropout
      draws from torch's);
    - the per-epoch logs so far (for `history.csv`), and the state of the
      callbacks passed in: `MacroF1Checkpoint`'s best score and epoch,
      `SWA`'s running sums, `EarlyStopping`'s patience counter.

    The learning-rate schedule (`WarmupCosine`) and `CXRDataset`'s sampling
    and augmentation are functions of the epoch and step numbers, so
    `fit(initial_epoch=state.epochs_done)` puts them back in place.

    To continue: build and compile the same model, `set_model(model)` and
    `restore()` before `fit`, and fit with `initial_epoch=` what `restore`
    returns (the number of completed epochs). Put this callback after the callbacks it
    saves: at the start of training it restores their state after they have
    reset themselves, and at the end of an epoch it saves what they recorded.

    Args:
        filepath: the `.npz` snapshot file.
        checkpoint: the run's `MacroF1Checkpoint`, or None.
        swa: the run's `SWA`, or None.
        early_stopping: the run's `keras.callbacks.EarlyStopping`, or None.
        run: a dict of facts a continued run must share (e.g.
            `{"world_size": 2, "sync_batch_norm": True}`); `restore` refuses
            a snapshot whose facts differ, naming them.
        write: `False` on the ranks of a data-parallel run that do not write
            files: they keep the history but save nothing.

    Example:

    ```python
    state = TrainingState("run/training_state.npz", checkpoint=ckpt)
    start = 0
    if resuming:
        state.set_model(model)
        start = state.restore()
    model.fit(train, epochs=45, initial_epoch=start, callbacks=[..., ckpt, state])
    ```
    """

    def __init__(self, filepath, checkpoint=None, swa=None, early_stopping=None, run=None, write=True):
        super().__init__()
        self.filepath = str(filepath)
        self.run = dict(run or {})
        self.write = write
        self.checkpoint = checkpoint
        self.swa = swa
        self.early_stopping = early_stopping
        self.history = []  # one dict of logs per completed epoch
        self._pending = None  # callback state read by `restore`, applied at train begin

    def on_train_begin(self, logs=None):
        if self._pending is not None:
            _set_callback_state(self, self._pending)
            self._pending = None

    def on_epoch_end(self, epoch, logs=None):
        row = {k: _plain(v) for k, v in (logs or {}).items()}
        self.history.append(row)
        if self.write and all(math.isfinite(v) for v in row.values() if isinstance(v, float)):
            self._save(epoch + 1)  # a diverged epoch (NaN loss) is not worth continuing from

    def _save(self, epochs_done):
        import torch

        model, optimizer = self.model, self.model.optimizer
        meta = {
            "format": _FORMAT,
            "epochs_done": epochs_done,
            "run": self.run,
            "history": self.history,
            "callbacks": _callback_state(self),
            "python_random": _to_json(random.getstate()),
            "numpy_random": _to_json(np.random.get_state()),
            "model_variables": [v.path for v in model.variables],
            "optimizer_variables": [v.path for v in optimizer.variables],
        }
        arrays = {"meta": np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8),
                  "torch_random": torch.get_rng_state().numpy()}
        if torch.cuda.is_available():
            for i, state in enumerate(torch.cuda.get_rng_state_all()):
                arrays[f"cuda_random_{i}"] = state.numpy()
        for prefix, variables in (("model", model.variables), ("optimizer", optimizer.variables)):
            for i, v in enumerate(variables):
                arrays[f"{prefix}_{i}"] = keras.ops.convert_to_numpy(v.value)
        swa_sums = getattr(self.swa, "_sums", None) or []
        for i, s in enumerate(swa_sums):
            arrays[f"swa_{i}"] = s
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        with atomic_write(self.filepath, "wb") as f:
            f.write(buffer.getbuffer())

    def restore(self, filepath=None):
        """Load a snapshot into the model, its optimizer and the random generators.

        Call it after `compile` and before `fit`. The callbacks' state is
        applied when `fit` starts. Returns the number of completed epochs
        (pass it to `fit` as `initial_epoch`).

        Raises:
            ValueError: the file is not a snapshot of this model (its
                variables differ in number, name or shape).
        """
        import torch

        path = str(filepath or self.filepath)
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
        meta = _meta(arrays)
        if meta.get("format") != _FORMAT:
            raise ValueError(f"{path}: training-state format {meta.get('format')!r}, this keras-cxr reads "
                             f"format {_FORMAT} (a snapshot of another keras-cxr version)")
        saved_run = meta.get("run", {})
        changed = [f"{k} {saved_run.get(k)!r} -> {self.run.get(k)!r}" for k in sorted(set(saved_run) | set(self.run))
                   if saved_run.get(k) != self.run.get(k)]
        if changed:
            raise ValueError(f"{path}: the run continued differs from the run saved in {', '.join(changed)}; "
                             "continue it with the same settings")
        model, optimizer = self.model, self.model.optimizer
        if not optimizer.built:
            optimizer.build(model.trainable_variables)
        _assign(path, "model", model.variables, meta["model_variables"], arrays)
        _assign(path, "optimizer", optimizer.variables, meta["optimizer_variables"], arrays)
        random.setstate(_from_json(meta["python_random"]))
        np.random.set_state(tuple(_from_json(meta["numpy_random"])))
        torch.set_rng_state(torch.from_numpy(arrays["torch_random"]))
        cuda_states = [torch.from_numpy(a) for a in _numbered(arrays, "cuda_random")]
        if cuda_states and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(cuda_states)
        self.history = meta["history"]
        self._pending = dict(meta["callbacks"], swa_sums=_numbered(arrays, "swa"))
        return int(meta["epochs_done"])


def read_epochs_done(filepath):
    """How many epochs the snapshot at `filepath` completed (without loading its arrays)."""
    with np.load(str(filepath), allow_pickle=False) as data:
        return int(_meta(data)["epochs_done"])


def _meta(arrays):
    return json.loads(arrays["meta"].tobytes().decode())


def _numbered(arrays, prefix):
    """`arrays[f"{prefix}_0"]`, `arrays[f"{prefix}_1"]`, ... while they exist."""
    found = []
    while f"{prefix}_{len(found)}" in arrays:
        found.append(arrays[f"{prefix}_{len(found)}"])
    return found


def _assign(path, prefix, variables, saved_paths, arrays):
    if len(variables) != len(saved_paths):
        raise ValueError(f"{path}: the snapshot has {len(saved_paths)} {prefix} variables, "
                         f"this {prefix} has {len(variables)}; it was saved by another model or optimizer")
    for i, v in enumerate(variables):
        value = arrays[f"{prefix}_{i}"]
        if tuple(value.shape) != tuple(v.shape):
            raise ValueError(f"{path}: {prefix} variable {v.path} has shape {tuple(v.shape)}, "
                             f"the snapshot's {saved_paths[i]} has {tuple(value.shape)}")
        v.assign(value)


def _callback_state(state):
    out = {}
    if state.checkpoint is not None:
        c = state.checkpoint
        out["checkpoint"] = {"best": c.best, "best_epoch": c.best_epoch, "best_source": c.best_source,
                             "scores": {str(k): _plain(v) for k, v in c.scores.items()}}
    if state.swa is not None:
        out["swa"] = {"n_averaged": state.swa.n_averaged}
    if state.early_stopping is not None:
        e = state.early_stopping
        out["early_stopping"] = {"wait": e.wait, "best": _plain(e.best), "best_epoch": e.best_epoch}
    return out


def _set_callback_state(state, saved):
    if state.checkpoint is not None and "checkpoint" in saved:
        c, s = state.checkpoint, saved["checkpoint"]
        c.best, c.best_epoch, c.best_source = s["best"], s["best_epoch"], s["best_source"]
        c.scores = {int(k): v for k, v in s["scores"].items()}
    if state.swa is not None and "swa" in saved:
        state.swa.n_averaged = saved["swa"]["n_averaged"]
        state.swa._sums = [np.array(s, dtype=np.float64) for s in saved["swa_sums"]] or None
    if state.early_stopping is not None and "early_stopping" in saved:
        e, s = state.early_stopping, saved["early_stopping"]
        e.wait, e.best, e.best_epoch = s["wait"], s["best"], s["best_epoch"]


def _plain(value):
    """A JSON-safe Python number from a logs value (tensors and NumPy scalars included)."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    try:
        return float(keras.ops.convert_to_numpy(value))
    except (TypeError, ValueError):
        return str(value)


def _to_json(value):
    if isinstance(value, tuple):
        return {"tuple": [_to_json(v) for v in value]}
    if isinstance(value, np.ndarray):
        return {"array": value.tolist(), "dtype": str(value.dtype)}
    return value


def _from_json(value):
    if isinstance(value, dict) and "tuple" in value:
        return tuple(_from_json(v) for v in value["tuple"])
    if isinstance(value, dict) and "array" in value:
        return np.array(value["array"], dtype=value["dtype"])
    if isinstance(value, list):
        return [_from_json(v) for v in value]
    return value

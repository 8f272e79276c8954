"""Training callbacks for keras-cxr, each usable with plain `model.fit`.

Recommended order in the callbacks list:
`[NaNGuard(), WarmupCosine(...), EMAWarmup() (optimizers with use_ema=True), AverageBatchNormStatistics(...) (data-parallel runs), MacroF1Checkpoint(...), EarlyStopping(monitor="val_macro_f1", mode="max"), SWA(...),
TrainingState(...), CollectCycles()]`.
"""

from keras_cxr.callbacks.average_batch_norm import AverageBatchNormStatistics
from keras_cxr.callbacks.collect_cycles import CollectCycles
from keras_cxr.callbacks.ema_warmup import EMAWarmup
from keras_cxr.callbacks.ema_warmup import ema_warmup_momentum
from keras_cxr.callbacks.macro_f1_checkpoint import MacroF1Checkpoint
from keras_cxr.callbacks.nan_guard import NaNGuard
from keras_cxr.callbacks.swa import SWA
from keras_cxr.callbacks.swa import update_bn
from keras_cxr.callbacks.training_state import TrainingState
from keras_cxr.callbacks.warmup_cosine import WarmupCosine
from keras_cxr.callbacks.warmup_cosine import warmup_cosine_lr

__all__ = ["AverageBatchNormStatistics", "CollectCycles", "EMAWarmup", "MacroF1Checkpoint", "NaNGuard", "SWA", "TrainingState", "WarmupCosine", "ema_warmup_momentum", "update_bn", "warmup_cosine_lr"]

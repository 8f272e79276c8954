"""Data-parallel training with torch.distributed: one process per GPU (or CPU share), launched by torchrun.

- `initialize()` joins the process group torchrun set up (NCCL on GPUs,
  gloo on CPUs) and returns the `Context` (rank, world size);
- `data_parallel(model, context)` averages gradients at every step of
  `model.fit`;
- `CXRDataset(..., shard=context)` gives each rank its slice of every
  global batch and of the validation rows;
- `global_dropout_masks(context)`, `synchronized_batch_norm(context)` and
  `keras_cxr.callbacks.AverageBatchNormStatistics` make the ranks' dropout
  and batch norm those of one process with the whole batch;
- `keras_cxr.training.fit_recipe` does all of it when the group is up, and
  `keras-cxr fit --nproc N` (`launch`) starts the ranks on one machine.

Nothing here runs at import; torch.distributed is imported when used.
"""

from keras_cxr.distributed.context import Context, current, initialize, requested, shutdown

__all__ = ["Context", "current", "initialize", "requested", "shutdown"]

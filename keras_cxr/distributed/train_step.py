"""Gradient averaging across ranks inside Keras's own torch train step."""

import types

import keras


def _check_trainer(model):
    missing = [name for name in ("_compute_loss", "_loss_tracker", "_call_has_training_arg", "optimizer")
               if not hasattr(model, name)]
    if missing:
        raise RuntimeError(f"data-parallel training needs Keras's torch trainer (keras {keras.__version__} "
                           f"has no Model.{', Model.'.join(missing)})")


def data_parallel(model, context):
    """Make `model.fit` average gradients over the ranks of `context` at every step.

    Replaces this model's `train_step` (the instance's, not the class's) by
    Keras's torch train step with one all-reduce between `backward` and
    `optimizer.apply`: the gradients and the loss travel in one flat buffer
    and are divided by the world size, so clipping, loss scaling and EMA see
    the averaged gradient, and the logged loss is the global batch's on every
    rank. With equal per-rank batches this equals one process with the whole
    batch, up to summation order. Call it after `compile`; a `None` context
    leaves the model as it is. Returns the model.
    """
    if context is None or context.world_size < 2:
        return model
    _check_trainer(model)
    model.train_step = types.MethodType(_make_step(context.world_size), model)
    return model


def _make_step(world_size):
    import torch
    import torch.distributed as dist

    def train_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        y_pred = self(x, training=True) if self._call_has_training_arg else self(x)
        self.zero_grad()
        loss = self._compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=True)
        scaled = self.optimizer.scale_loss(loss)
        scaled.backward()
        trainable = self.trainable_weights[:]
        gradients = [v.value.grad for v in trainable]
        present = [g for g in gradients if g is not None]
        flat = torch.cat([g.reshape(-1).float() for g in present] + [loss.detach().reshape(1).float()])
        dist.all_reduce(flat)
        flat /= world_size
        offset = 0
        for g in present:
            g.copy_(flat[offset : offset + g.numel()].view(g.shape).to(g.dtype))
            offset += g.numel()
        local_batch = next(i for i in keras.tree.flatten(x) if i is not None).shape[0]
        self._loss_tracker.update_state(flat[-1], sample_weight=local_batch * world_size)
        with torch.no_grad():
            self.optimizer.apply(gradients, trainable)
        return self.compute_metrics(x, y, y_pred, sample_weight=sample_weight)

    return train_step

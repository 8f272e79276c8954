"""NaNGuard: the first non-finite loss is recorded and training stops."""






def test_nan_guard_records_the_first_non_finite_loss_and_stops():
    from keras_cxr.callbacks import NaNGuard

    class Model:
        stop_training = False

    guard = NaNGuard()
    guard.set_model(Model())
    guard.on_epoch_begin(0)
    guard.on_train_batch_end(0, {"loss": 1.2})
    guard.on_epoch_begin(1)
    guard.on_train_batch_end(0, {"loss": 0.9})
    assert not guard.tripped and not guard.model.stop_training
    guard.on_train_batch_end(1, {"loss": float("inf")})
    guard.on_train_batch_end(2, {"loss": float("nan")})
    assert guard.tripped and guard.model.stop_training
    assert (guard.epoch, guard.step, guard.loss) == (2, 2, float("inf"))

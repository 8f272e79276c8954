import os, sys, time
os.environ.setdefault("KERAS_BACKEND", "torch")
import numpy as np

W = 2
B = int(os.environ.get('TB', 8)); STEPS = int(os.environ.get('TSTEPS', 6)); H = int(os.environ.get('TH', 64))
_DDP = {}

def build(seed):
    import keras
    from keras_cxr.seeding import set_seed
    set_seed(seed)
    inp = keras.Input((20,))
    x = keras.layers.Dense(H, activation="relu")(inp)
    x = keras.layers.Dense(H, activation="relu")(x)
    out = keras.layers.Dense(4, activation="softmax")(x)
    return inp, out

def data():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(STEPS * W * B, 20)).astype("float32")
    Y = np.eye(4, dtype="float32")[rng.integers(0, 4, len(X))]
    return X, Y

def make_model(mode):
    import keras, torch, torch.distributed as dist
    class AR(keras.Model):
        def train_step(self, data):
            x, y, _ = keras.utils.unpack_x_y_sample_weight(data)
            y_pred = self(x, training=True)
            self.zero_grad()
            loss = self._compute_loss(x=x, y=y, y_pred=y_pred, training=True)
            self._loss_tracker.update_state(loss, sample_weight=x.shape[0])
            loss.backward()
            tv = self.trainable_weights[:]
            grads = [v.value.grad for v in tv]
            flat = torch.cat([g.reshape(-1) for g in grads])
            dist.all_reduce(flat)
            flat /= dist.get_world_size()
            off = 0
            for g in grads:
                n = g.numel(); g.copy_(flat[off:off+n].view_as(g)); off += n
            with torch.no_grad():
                self.optimizer.apply(grads, tv)
            return self.compute_metrics(x, y, y_pred)
    class DDPModel(keras.Model):
        def train_step(self, data):
            x, y, _ = keras.utils.unpack_x_y_sample_weight(data)
            if id(self) not in _DDP:
                _DDP[id(self)] = torch.nn.parallel.DistributedDataParallel(self)
            y_pred = _DDP[id(self)](x, training=True)
            self.zero_grad()
            loss = self._compute_loss(x=x, y=y, y_pred=y_pred, training=True)
            self._loss_tracker.update_state(loss, sample_weight=x.shape[0])
            loss.backward()
            tv = self.trainable_weights[:]
            with torch.no_grad():
                self.optimizer.apply([v.value.grad for v in tv], tv)
            return self.compute_metrics(x, y, y_pred)
    inp, out = build(0)
    cls = {"ar": AR, "ddp": DDPModel, "single": keras.Model}[mode]
    m = cls(inp, out)
    m.compile(optimizer=keras.optimizers.AdamW(1e-2, weight_decay=0.05), loss="categorical_crossentropy")
    return m

def run(rank, mode, q):
    import torch
    torch.set_num_threads(1)
    if mode != "single":
        import torch.distributed as dist
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT="29533")
        import datetime; dist.init_process_group("gloo", rank=rank, world_size=W, timeout=datetime.timedelta(seconds=20))
    X, Y = data()
    m = make_model(mode)
    hist = []
    t = None
    for s in range(STEPS):
        if s == 3: t = time.perf_counter()
        if mode == "single":
            xb, yb = X[s*W*B:(s+1)*W*B], Y[s*W*B:(s+1)*W*B]
        else:
            g = X[s*W*B:(s+1)*W*B]; h = Y[s*W*B:(s+1)*W*B]
            xb, yb = g[rank*B:(rank+1)*B], h[rank*B:(rank+1)*B]
        logs = m.train_on_batch(xb, yb, return_dict=True)
        hist.append(float(logs["loss"]))
    dt = (time.perf_counter() - t) / (STEPS - 3)
    w = np.concatenate([np.asarray(v.numpy()).ravel() for v in m.trainable_weights])
    q.put((mode, rank, w, dt))
    if mode != "single":
        dist.destroy_process_group()

if __name__ == "__main__":
    import torch.multiprocessing as mp
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    res = {}
    for mode in ("single", "ar", "ddp"):
        n = 1 if mode == "single" else W
        ps = [ctx.Process(target=run, args=(r, mode, q)) for r in range(n)]
        [p.start() for p in ps]
        for _ in range(n):
            md, r, w, dt = q.get()
            res[(md, r)] = (w, dt)
        [p.join() for p in ps]
    ref = res[("single", 0)][0]
    print("params", ref.size)
    for mode in ("ar", "ddp"):
        w0, w1 = res[(mode, 0)][0], res[(mode, 1)][0]
        print(mode, "rank0==rank1 maxabs", np.abs(w0 - w1).max(),
              "vs single maxabs", np.abs(w0 - ref).max(),
              "max rel", (np.abs(w0 - ref) / (np.abs(ref) + 1e-12)).max(),
              "ms/step", [round(res[(mode, r)][1]*1e3, 1) for r in (0, 1)])
    print("single ms/step", round(res[("single", 0)][1]*1e3, 1))

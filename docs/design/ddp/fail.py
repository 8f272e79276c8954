import os, sys, time, datetime, signal
import torch, torch.distributed as dist
from torch.distributed.elastic.multiprocessing.errors import record
torch.set_num_threads(1)
MODE = os.environ.get("FAILMODE", "kill")
@record
def main():
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=int(os.environ.get("PGTIMEOUT", "30"))))
    r = dist.get_rank(); t0 = time.time()
    x = torch.ones(1000)
    for step in range(100000):
        if r == 1 and step == 200:
            if MODE == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            elif MODE == "raise":
                raise RuntimeError("boom on rank 1")
            elif MODE == "hang":
                time.sleep(1000)
        try:
            dist.all_reduce(x); x.fill_(1.0)
        except Exception as e:
            print(f"rank {r}: step {step}: {type(e).__name__}: {str(e)[:200]} after {time.time()-t0:.1f}s", flush=True)
            raise
        time.sleep(0.005)
main()

"""Influence with the training set split across processes: each rank computes the gradients and
curvature products of its own shard; every rank gets the same, full scores.

    torchrun --nproc_per_node 2 examples/distributed.py            # gloo on CPU, nccl on GPUs
    python examples/distributed.py                                 # one process: the same numbers
"""
import os
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.elastic.multiprocessing.errors import record

from influent import Attributor, Task
from influent.data import load_digits
from influent.train import fit_lbfgs, mlp


@record  # a rank that fails is reported by torchrun with its rank and traceback
def main(n_train: int = 1000, n_query: int = 3) -> None:
    torch.set_num_threads(1)
    if "RANK" in os.environ:  # started by torchrun
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    rank = dist.get_rank() if dist.is_initialized() else 0
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if torch.cuda.is_available() else "cpu"
    if device != "cpu":
        torch.cuda.set_device(device)

    X, y = load_digits(torch.float64)  # every rank passes the whole training set; influent shards it
    model = mlp([64, 32, 10], dtype=torch.float64, seed=0).eval()
    if rank == 0:
        fit_lbfgs(model, Task.classification(), (X[:n_train], y[:n_train]), weight_decay=1e-3, max_iter=300)
    if dist.is_initialized():  # every rank scores the model rank 0 trained
        for p in model.parameters():
            dist.broadcast(p.data, src=0)

    attr = Attributor(model.to(device), Task.classification(), curvature="ggn", solver="cg", damping=1e-3)
    store = Path(tempfile.gettempdir()) / "influent-distributed-store"  # one resumable store per rank inside
    attr.fit((X[:n_train], y[:n_train]), store=store)
    scores = attr.score((X[-n_query:], y[-n_query:]))
    if rank == 0:
        print(f"{scores.shape[1]} training examples over {dist.get_world_size() if dist.is_initialized() else 1} "
              f"process(es); fit {attr.timings_['fit_total']:.1f} s")
        for q, ids in enumerate(scores.proponents(5)):
            print(f"query {q} (label {int(y[-n_query + q])}): most helpful training examples {ids}")
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main()

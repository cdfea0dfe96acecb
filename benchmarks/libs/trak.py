"""TRAK (traker 0.3) with one checkpoint, under influent's conventions.

TRAK scores φ_q^T (ΦᵀΦ + λ_reg I)^{-1} Φᵀ diag(1 − p_i) with φ = projected gradients of the margin
log p_y − log(1 − p_y). Since ∇loss = −(1 − p_y)∇margin, its train side is −(projected) g_i and its
query side −g_q/(1 − p_q): positive = helpful already. Fixed here: ΦᵀΦ is a SUM over examples, so
λ_reg = n·wd (also what makes ΦᵀΦ invertible when the projection is wider than n) and scores are
multiplied by n; each query row is multiplied by (1 − p_q) to turn the margin into the loss.
The layout [train, query] is transposed. Projections are dense (BasicProjector; fast_jl is CUDA only),
in two blocks: with one block traker 0.3.2 frees the matrix after featurizing and never redraws it.
"""
from __future__ import annotations

import torch
from torch import Tensor

from . import Method, Problem, as_scores


def _scores(proj_dim: int) -> Method:
    def run(p: Problem) -> Tensor:
        from trak import TRAKer
        from trak.projectors import BasicProjector, ProjectionType

        dtype = next(p.model.parameters()).dtype
        projector = BasicProjector(grad_dim=p.n_params, proj_dim=proj_dim, seed=0, proj_type=ProjectionType.normal,
                                   device="cpu", dtype=dtype, block_size=proj_dim // 2)
        tr = TRAKer(model=p.model, task="image_classification", train_set_size=p.n,
                    save_dir=str(p.workdir / f"trak-{proj_dim}"), device="cpu",
                    projector=projector, proj_dim=proj_dim, use_half_precision=False,
                    lambda_reg=p.n * p.weight_decay, logging_level=40)
        tr.load_checkpoint(p.model.state_dict(), model_id=0)
        X, y = p.train
        for s in range(0, p.n, p.batch_size):
            tr.featurize(batch=(X[s:s + p.batch_size], y[s:s + p.batch_size]), num_samples=len(y[s:s + p.batch_size]))
        tr.finalize_features()
        xq, yq = p.query
        tr.start_scoring_checkpoint(exp_name="q", checkpoint=p.model.state_dict(), model_id=0, num_targets=len(yq))
        tr.score(batch=(xq, yq), num_samples=len(yq))
        v = torch.as_tensor(tr.finalize_scores(exp_name="q")).double()
        with torch.no_grad():
            p_q = torch.softmax(p.model(xq).double(), -1).gather(1, yq[:, None]).flatten()
        return as_scores(v, len(yq), p.n, transpose=True, scale=float(p.n)) * (1 - p_q)[:, None]
    return run


def methods(scale: str) -> dict[str, Method]:
    dims = (512, 2048) if scale == "small" else (512,)
    return {f"TRAK k={k}": _scores(k) for k in dims}


def self_methods(scale: str) -> dict[str, Method]:
    """TRAK has no self-influence entry point: none."""
    return {}

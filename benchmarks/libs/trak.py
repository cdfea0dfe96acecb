"""TRAK (traker 0.3) with one checkpoint, under influent's conventions.

TRAK scores φ_q^T (ΦᵀΦ + λ_reg I)^{-1} Φᵀ diag(1 − p_i) with φ = Pᵀ∇margin, the projected gradients
of the margin log p_y − log(1 − p_y). Since ∇loss = −(1 − p_y)∇margin, its train side is −Pᵀg_i and
its query side −Pᵀg_q/(1 − p_q): positive = helpful already. Fixed here: ΦᵀΦ is a SUM over examples
(n·PᵀMP, M the mean Gram of the margin gradients: TRAK's curvature). traker's dense projection has
N(0, 1) entries and it divides the projected gradients by √D (D = number of parameters), so its
effective P has E[PPᵀ] = (k/D)·I: λ_reg = (k/D)·n·wd makes the scores × n the JL sketch of
g_qᵀ(M + wd·I)⁻¹g_i (push-through: Pᵀ(PᵀGᵀGP/n + λ')⁻¹PᵀGᵀ = PᵀGᵀ(GPPᵀGᵀ/n + λ')⁻¹ with
PPᵀ ≈ (k/D)·I). Checked on digits against that formula in float64 without projection: Spearman
0.85, scale ratio 0.95 at k = 2048. Each query row is multiplied by (1 − p_q) to turn the margin into
the loss. traker 0.3.2 divides (XᵀX + λ_reg I)⁻¹ by the mean absolute value of its entries before
scoring (a "centering" for float16), an arbitrary data-dependent factor: it is read back from
traker's own stored features and undone (_inverse_scale). The layout [train, query] is transposed.
Projections are dense (BasicProjector; fast_jl is CUDA only), in two blocks: with one block traker
0.3.2 frees the matrix after featurizing (free_memory) and regenerates it only for a new model_id,
so scoring fails with "'BasicProjector' object has no attribute 'proj_matrix'" (library bug).
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
        lam = proj_dim / p.n_params * p.n * p.weight_decay  # traker's P: N(0, 1)/√D, E[PPᵀ] = (k/D)·I (docstring)
        projector = BasicProjector(grad_dim=p.n_params, proj_dim=proj_dim, seed=0, proj_type=ProjectionType.normal,
                                   device="cpu", dtype=dtype, block_size=proj_dim // 2)
        tr = TRAKer(model=p.model, task="image_classification", train_set_size=p.n,
                    save_dir=str(p.workdir / f"trak-{proj_dim}"), device="cpu",
                    projector=projector, proj_dim=proj_dim, use_half_precision=False,
                    lambda_reg=lam, logging_level=40)
        tr.load_checkpoint(p.model.state_dict(), model_id=0)
        X, y = p.train
        for s in range(0, p.n, p.batch_size):
            tr.featurize(batch=(X[s:s + p.batch_size], y[s:s + p.batch_size]), num_samples=len(y[s:s + p.batch_size]))
        tr.finalize_features()
        c = _inverse_scale(tr, lam)
        xq, yq = p.query
        tr.start_scoring_checkpoint(exp_name="q", checkpoint=p.model.state_dict(), model_id=0, num_targets=len(yq))
        tr.score(batch=(xq, yq), num_samples=len(yq))
        v = torch.as_tensor(tr.finalize_scores(exp_name="q")).double()
        with torch.no_grad():
            p_q = torch.softmax(p.model(xq).double(), -1).gather(1, yq[:, None]).flatten()
        return as_scores(v, len(yq), p.n, transpose=True, scale=float(p.n) * c) * (1 - p_q)[:, None]
    return run


def _inverse_scale(tr, lambda_reg: float) -> float:
    """The constant traker divided (XᵀX + λ_reg I)⁻¹ by (mean |entry|), read back from its own store.

    traker 0.3.2's BasicScoreComputer.get_x_xtx_inv "centers" the inverse (xtx_inv /= xtx_inv.abs().mean()),
    so its scores carry an arbitrary data-dependent factor. Recomputed from the stored train features
    (model 0, kept by finalize_features(del_grads=False)) and checked against the stored X(XᵀX + λI)⁻¹.
    """
    g = torch.as_tensor(tr.saver.current_store["grads"], device=tr.device)
    xtx = tr.score_computer.get_xtx(g)
    inv = torch.linalg.inv((xtx + lambda_reg * torch.eye(len(xtx), dtype=xtx.dtype)).to(torch.float32))
    c = float(inv.abs().mean())
    stored = torch.as_tensor(tr.saver.current_store["features"]).double()
    expect = g.double() @ inv.double()
    err = float((stored * c - expect).norm() / expect.norm())
    if err > 1e-3:
        raise RuntimeError(f"traker's stored features are not X(XᵀX + λI)⁻¹ / mean|inv| (rel. err {err:.2g}): "
                           "re-check the adapter against this traker version")
    return c


def methods(scale: str) -> dict[str, Method]:
    dims = (512, 2048) if scale == "small" else (512,)
    return {f"TRAK k={k}": _scores(k) for k in dims}


def self_methods(scale: str) -> dict[str, Method]:
    """TRAK has no self-influence entry point: none."""
    return {}

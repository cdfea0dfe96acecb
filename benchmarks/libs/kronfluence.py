"""Kronfluence (identity / diagonal / K-FAC / EK-FAC) under influent's conventions.

Conventions fixed here: Kronfluence's factors are averages over examples (mean-loss curvature,
like influent) of the loss alone, so weight decay enters as its damping: damping_factor = wd.
Its task returns the SUM of per-example losses, whose per-example gradients are influent's g_i.
Its pairwise scores are g_q^T (F + λI)^{-1} g_i with positive = helpful: sign +1, [query, train].
The Fisher uses labels sampled from the model (compute_train_loss(sample=True)), as influent's.
"""
from __future__ import annotations

import logging

import torch
from torch import Tensor

from . import Method, Problem, as_scores

STRATEGIES = {"ekfac": "ekfac", "kfac": "kfac", "diagonal": "diagonal", "identity": "identity"}


def _analyzer(p: Problem, strategy: str):
    import torch.nn.functional as F
    from kronfluence.analyzer import Analyzer, prepare_model
    from kronfluence.arguments import FactorArguments
    from kronfluence.task import Task

    class Classification(Task):
        def compute_train_loss(self, batch, model, sample=False):
            x, y = batch
            logits = model(x)
            if sample:
                with torch.no_grad():
                    y = torch.multinomial(torch.softmax(logits.detach(), -1), 1).flatten()
            return F.cross_entropy(logits, y, reduction="sum")

        def compute_measurement(self, batch, model):
            x, y = batch
            return F.cross_entropy(model(x), y, reduction="sum")

    dtype = next(p.model.parameters()).dtype
    model = prepare_model(p.model, Classification())
    analyzer = Analyzer(analysis_name=f"{p.name}-{strategy}", model=model, task=Classification(), cpu=True,
                        disable_tqdm=True, output_dir=str(p.workdir / "kronfluence"), log_level=logging.WARNING)
    fargs = FactorArguments(strategy=STRATEGIES[strategy], activation_covariance_dtype=dtype,
                            gradient_covariance_dtype=dtype, lambda_dtype=dtype, per_sample_gradient_dtype=dtype)
    torch.manual_seed(0)
    analyzer.fit_all_factors(factors_name=strategy, dataset=p.dataset("train"), factor_args=fargs,
                             per_device_batch_size=p.batch_size, overwrite_output_dir=True)
    return analyzer


def _score_args(p: Problem):
    from kronfluence.arguments import ScoreArguments

    dtype = next(p.model.parameters()).dtype
    return ScoreArguments(damping_factor=p.weight_decay, per_sample_gradient_dtype=dtype, precondition_dtype=dtype,
                          score_dtype=dtype)


def _scores(strategy: str) -> Method:
    def run(p: Problem) -> Tensor:
        a = _analyzer(p, strategy)
        a.compute_pairwise_scores(scores_name=f"s-{strategy}", factors_name=strategy, query_dataset=p.dataset("query"),
                                  train_dataset=p.dataset("train"), per_device_query_batch_size=len(p.query[1]),
                                  per_device_train_batch_size=p.batch_size, score_args=_score_args(p),
                                  overwrite_output_dir=True)
        v = a.load_pairwise_scores(f"s-{strategy}")["all_modules"]
        return as_scores(v, len(p.query[1]), p.n)
    return run


def _self(strategy: str) -> Method:
    def run(p: Problem) -> Tensor:
        a = _analyzer(p, strategy)
        a.compute_self_scores(scores_name=f"self-{strategy}", factors_name=strategy, train_dataset=p.dataset("train"),
                              per_device_train_batch_size=p.batch_size, score_args=_score_args(p),
                              overwrite_output_dir=True)
        return torch.as_tensor(a.load_self_scores(f"self-{strategy}")["all_modules"]).double().flatten()
    return run


def methods(scale: str) -> dict[str, Method]:
    """All four Kronfluence strategies at either scale (they are all layer-wise and cheap)."""
    return {f"{s}": _scores(s) for s in STRATEGIES}


def self_methods(scale: str) -> dict[str, Method]:
    return {f"{s}": _self(s) for s in STRATEGIES}

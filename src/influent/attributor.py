"""Attributor: the estimator that wires task, parameters, curvature, solver and scoring."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from .curvature import CURVATURES, make_curvature
from . import distributed, memory
from .errors import InputError, NotFittedError
from .grads import ModelFunction, check_batch, eval_mode
from .inputs import Examples, as_examples
from .params import check_finite_params, select_params
from .compress import make_compressor
from .compressed import compressed_curvature, compressed_rows, rows_second_moment
from .persistence import load_state, model_fingerprint, save_state
from .progress import stage, track
from .store import GradientStore, fill_store
from .sampling import make_sampler
from .scores import Scores
from .factors import (NotFactorable, eigen_query_matrices, eigen_self_influence, factor_batch, factor_blocks,
                      flatten_factors, layer_matrices, plan_factors, rotate, score_with_matrices, self_similarity,
                      similarity)
from .scoring import all_gradients, block_rows, gradient_blocks, precondition, score_matrix, score_top_k, self_scores
from .solvers import SOLVERS, Direct, make_solver
from .solvers.base import Identity as IdentitySolver
from .task import Task

CACHE_BYTES = 2**30  # keep training gradients in memory up to this size, else recompute per call


class Attributor:
    """Influence of training examples on queries: score[q, i] = g_qᵀ (H + λI)⁻¹ g_i, positive = helpful.

    Example:
        >>> attr = Attributor(model, Task.classification(), damping=1e-3).fit((X, y))
        >>> attr.score((Xq, yq)).top_k(5)

    Under torch.distributed (torchrun) every rank passes the same data; each keeps and scores its
    shard, curvature products are all-reduced, and score/top_k/self_influence return global results.
    """

    partition_: distributed.Partition | None = None  # set by fit under torch.distributed
    _rows_unfactorable = False  # set when a batch refuses the factored training-row path

    def __init__(self, model: nn.Module, task: Task, *, params: Any = "all", curvature: Any = "hessian",
                 solver: Any = "direct", damping: float = 1e-3, compress: Any = None, sampler: Any = None,
                 batch_size: int = 256, dtype: torch.dtype | None = None, device: Any = None, seed: int = 0,
                 progress: bool = False, cache_bytes: int = CACHE_BYTES, memory: int | str | None = None):
        self.memory = memory  # a budget such as "8GB": fit and score refuse early when the plan exceeds it
        self.model, self.task, self.params, self.curvature, self.solver = model, task, params, curvature, solver
        self.damping, self.compress, self.sampler, self.batch_size = damping, compress, sampler, batch_size
        self.dtype, self.device, self.seed, self.progress, self.cache_bytes = dtype, device, seed, progress, cache_bytes

    # ----- configuration checks (cheap, before any long work) ------------------------------
    def _validate(self) -> None:
        if not isinstance(self.model, nn.Module):
            raise InputError(f"model must be a torch.nn.Module, got {type(self.model).__name__}")
        if not isinstance(self.task, Task):
            raise InputError("task must be an influent.Task, e.g. Task.classification()")
        if not isinstance(self.damping, (int, float)) or not self.damping >= 0:
            raise InputError(f"damping must be a number >= 0, got {self.damping!r}; use e.g. the weight decay")
        if isinstance(self.curvature, str) and self.curvature not in CURVATURES:
            raise InputError(f"unknown curvature {self.curvature!r}; choose one of {', '.join(CURVATURES)}")
        if isinstance(self.solver, str) and self.solver not in SOLVERS:
            raise InputError(f"unknown solver {self.solver!r}; choose one of {', '.join(SOLVERS)}")
        if not isinstance(self.batch_size, int) or self.batch_size <= 0:
            raise InputError(f"batch_size must be a positive integer, got {self.batch_size!r}")
        if self.memory is not None:
            memory.parse_bytes(self.memory)

    def _examples(self, data: Any, ids: Sequence | None, name: str) -> Examples:
        p0 = next(self.model.parameters())
        return as_examples(data, ids, name).to(self.device or p0.device, self.dtype or p0.dtype)

    # ----- fit ------------------------------------------------------------------------------
    def fit(self, train: Any, ids: Sequence | None = None, store: str | Path | None = None) -> "Attributor":
        """Validate, build the curvature on the (sampled) training set, fit the solver, keep the gradients.

        With `store`, training gradients (compressed when `compress` is set) are written to a
        resumable gradient store in that directory: a rerun after a crash continues where it stopped.
        """
        self._validate()
        t0 = time.perf_counter()
        self.timings_: dict[str, float] = {}
        examples = self._examples(train, ids, "train")
        self.partition_ = distributed.partition(examples.ids)  # None unless torch.distributed is initialised
        if self.partition_ is not None:
            distributed.check_curvature(self.curvature)
        self.space_ = select_params(self.model, self.params)
        check_finite_params(self.model, self.space_)
        with eval_mode(self.model):
            self.fn_ = ModelFunction(self.model, self.task, self.space_)
            check_batch(self.fn_, examples.data, "train")
            self.factor_layers_ = plan_factors(self.model, self.space_)
            self.compressor_ = self._fit_compressor(examples)
            self.memory_plan_ = (None if self.memory is None
                                 else memory.check_attributor(self, examples, 0, full_scores=False))
            sampler = make_sampler(self.sampler)
            positions = list(range(len(examples))) if sampler is None else sampler.select(examples, self.fn_, self.seed)
            self.curvature_ids_ = [examples.ids[i] for i in positions]
            curv_set = examples if sampler is None else examples.subset(positions)
            # the empirical Fisher of compressed gradients over the whole training set is the mean
            # outer product of the training rows themselves: one gradient pass instead of two
            from_rows = sampler is None and self._curvature_from_rows()
            if not from_rows:
                with stage("curvature", self.progress):
                    self.curvature_ = self._make_curvature(curv_set)
                self.timings_["curvature"] = time.perf_counter() - t0
                self._fit_solver(curv_set)
            t2 = time.perf_counter()
            if self.partition_ is not None:  # this rank keeps, stores and scores only its own shard
                examples = examples.subset(self.partition_.positions)
                store = self.partition_.store_dir(store) if store is not None else None
            self.train_examples_, self.train_ids_, self.n_train_ = examples, list(examples.ids), len(examples)
            self.store_ = None
            self.train_grads_ = self._training_rows(examples, store)
            self.timings_["train_gradients"] = time.perf_counter() - t2
            if from_rows:
                t3 = time.perf_counter()
                self.curvature_ = rows_second_moment(self._train_blocks(), self._compute_dtype)
                self.timings_["curvature"] = time.perf_counter() - t3
                self._fit_solver(curv_set)
        self.timings_["fit_total"] = time.perf_counter() - t0
        return self

    def _curvature_from_rows(self) -> bool:
        """Whether the curvature over the whole training set is the mean outer product of its kept rows."""
        return self.compressor_ is not None and self.curvature == "empirical_fisher" and self.partition_ is None

    def _fit_solver(self, curv_set: Examples) -> None:
        t1 = time.perf_counter()
        curv_name = self.curvature if isinstance(self.curvature, str) else type(self.curvature).__name__
        self.solver_ = make_solver(self.solver, curvature_name=curv_name, size=self.curvature_.size, seed=self.seed)
        with stage(f"{self.solver_.name} fit", self.progress):
            self._attach_preconditioner(curv_set)
            self.solver_.fit(self.curvature_, self.damping)
        self.timings_["solver_fit"] = time.perf_counter() - t1

    def _attach_preconditioner(self, curv_set: Examples) -> None:
        """CG(preconditioner="kfac"|"ekfac"): that curvature on the same set and damping, inverted exactly."""
        name = getattr(self.solver_, "preconditioner", None)
        if not isinstance(name, str):
            return
        if self.compressor_ is not None or self.partition_ is not None:
            raise InputError(f"CG(preconditioner={name!r}) needs full gradients on one process; with compress= "
                             "the k × k curvature is small enough for solver='direct'")
        op = make_curvature(name, self.fn_, curv_set, batch_size=max(self.batch_size, 512), seed=self.seed)
        self.solver_.preconditioner_ = Direct().fit(op, self.damping)

    def _fit_compressor(self, examples: Examples):
        compressor = make_compressor(self.compress)
        if compressor is None:
            return None
        sample = None
        if compressor.needs_samples:  # e.g. PCA learns its map from a sample of training gradients
            n = min(len(examples), max(4 * int(getattr(compressor, "k", 0) or 0), 256))
            sample = all_gradients(self.fn_, examples.subset(range(n)), self._rows(), label="PCA sample")
        return compressor.fit(self.space_, sample, layers=self.factor_layers_)

    def _make_curvature(self, curv_set: Examples):
        if self.partition_ is not None and isinstance(self.curvature, str) \
                and self.curvature in distributed.SHARDED_CURVATURES:
            return self._sharded_curvature(curv_set)
        return self._local_curvature(curv_set)

    def _local_curvature(self, curv_set: Examples, start: int = 0):
        if self.compressor_ is not None:
            kind = self.curvature if isinstance(self.curvature, str) else "custom"
            return compressed_curvature(kind, self.fn_, self.compressor_, self.factor_layers_, curv_set,
                                        self.batch_size, seed=self.seed, progress=self.progress, start=start)
        return make_curvature(self.curvature, self.fn_, curv_set, batch_size=max(self.batch_size, 512), seed=self.seed,
                              start=start)

    def _sharded_curvature(self, curv_set: Examples) -> distributed.AllReduceMean:
        """The curvature of this rank's shard of the curvature set, all-reduced over ranks."""
        pos = distributed.shard(len(curv_set), self.partition_.rank, self.partition_.size)
        local = self._local_curvature(curv_set.subset(pos), start=pos.start) if len(pos) else None
        width = self.compressor_.k_ if self.compressor_ is not None else self.space_.numel
        p0 = next(self.model.parameters())
        return distributed.AllReduceMean(local, len(pos), len(curv_set), width, self._compute_dtype, p0.device)

    def _training_rows(self, examples: Examples, store: str | Path | None) -> Tensor | None:
        """Training gradients (or their compressions) kept in memory, via the store if given; None when
        they do not fit, in which case scoring recomputes them block by block."""
        width = self.compressor_.k_ if self.compressor_ is not None else self.space_.numel
        rows = self._rows() if self.compressor_ is None else self.batch_size
        compute = (lambda b: compressed_rows(self.fn_, self.compressor_, self.factor_layers_, b)) \
            if self.compressor_ is not None else self._per_example_rows
        if store is not None:
            gs = GradientStore.open(store, config=self._store_config(), dim=width, dtype=self._compute_dtype,
                                    fingerprint=model_fingerprint(self.model, self.space_))
            fill_store(gs, examples.ids, examples.batches(rows), compute, progress=self.progress)
            self.store_ = gs
        itemsize = torch.finfo(self._compute_dtype).bits // 8
        too_big = self.n_train_ * width * itemsize > self.cache_bytes
        if self.store_ is not None:  # scoring streams shards from disk when they do not fit in memory
            return None if too_big else self.store_.read_all().to(self._compute_dtype)
        if self.compressor_ is None and too_big:
            return None
        label = "training gradients" if self.compressor_ is None else "compressed training gradients"
        if len(examples) == 0:  # an empty distributed shard (more ranks than examples)
            return torch.zeros(0, width, dtype=self._compute_dtype, device=next(self.model.parameters()).device)
        out = None  # filled block by block: never the blocks and their concatenation at once
        for _, b in track(examples.batches(rows), -(-len(examples) // rows), label, self.progress):
            block = compute(b)
            if out is None:
                out, offset = block.new_empty(len(examples), block.shape[1]), 0
            out[offset: offset + block.shape[0]] = block
            offset += block.shape[0]
        return out

    def _per_example_rows(self, batch: Any) -> Tensor:
        """Flat training gradients of a batch: outer products of Linear-layer factors (one backward
        pass) when every selected parameter is a Linear's, else per-example autograd (vmap)."""
        if self.factor_layers_ is not None and not self._rows_unfactorable:
            try:  # factor_batch refuses non-finite output gradients, as per_example_grads does
                return flatten_factors(self.factor_layers_, self.space_, factor_batch(self.fn_, self.factor_layers_, batch))
            except NotFactorable:  # e.g. sequence inputs, or a layer called twice: autograd below
                self._rows_unfactorable = True
        return self.fn_.per_example_grads(batch)

    def _store_config(self) -> dict:
        return {"params": list(self.space_.names), "task": self.task.describe(),
                "compress": self.compressor_.config() if self.compressor_ is not None else None}

    @property
    def _compute_dtype(self) -> torch.dtype:
        return self.dtype or next(self.model.parameters()).dtype

    def _rows(self) -> int:
        itemsize = torch.finfo(self._compute_dtype).bits // 8
        return block_rows(self.space_.numel, itemsize, self.batch_size)

    def _check_fitted(self) -> None:
        if not hasattr(self, "solver_"):
            raise NotFittedError("call attr.fit(train) before scoring")

    def _factored(self) -> bool:
        """Score from Linear-layer factors: when the model fits and gradients are not cached."""
        return (self.train_grads_ is None and self.store_ is None and self.compressor_ is None
                and self.factor_layers_ is not None)

    def _train_blocks(self):
        if self.train_grads_ is not None:
            G = self.train_grads_  # compressed rows: blocks sized by their width k, not by P
            rows = self._rows() if self.compressor_ is None else block_rows(G.shape[1], G.element_size(), len(G) or 1)
            return ((o, self.train_grads_[o: o + rows]) for o in range(0, self.n_train_, rows))
        if self.store_ is not None:
            return ((o, rows.to(self._compute_dtype)) for o, rows in self.store_.blocks())
        return gradient_blocks(self.fn_, self.train_examples_, self._rows(), progress=self.progress,
                               label="training gradients")

    def _eigenbasis(self):
        """Per-layer (Q_S, Q_A, 1/(Λ+λ)) when a K-FAC curvature is inverted exactly, else None."""
        if not (isinstance(self.solver_, Direct) and hasattr(self.curvature_, "eigenbasis")):
            return None
        bases = self.curvature_.eigenbasis(self.damping, self._compute_dtype)
        return [bases[l.name] for l in self.factor_layers_]

    def _block_scorer(self, query: Any, ids: Sequence | None):
        """(score_block, blocks, query ids): score_block maps one training block to [n_query, b]."""
        self._check_fitted()
        examples = self._examples(query, ids, "query")
        qids = list(examples.ids)
        with eval_mode(self.model):
            check_batch(self.fn_, examples.data, "query")
            if self._factored():
                try:
                    return self._factored_scorer(examples) + (qids,)
                except NotFactorable:
                    self.factor_layers_ = None
            Q = self._query_rows(examples)
            low = self._low_rank()
            if low is not None:  # r projections per training gradient instead of n_query
                U, w = low
                QUw = (Q @ U) * w
                return (lambda G: QUw @ (G @ U).T), self._train_blocks(), qids
            PQ = precondition(self.solver_, Q)
        return (lambda G: PQ @ G.T), self._train_blocks(), qids

    def _query_rows(self, examples: Examples) -> Tensor:
        """Query gradients in the space the training rows live in (compressed when `compress` is set)."""
        if self.compressor_ is not None:
            return compressed_rows(self.fn_, self.compressor_, self.factor_layers_, examples.data, query=True)
        return all_gradients(self.fn_, examples, self._rows(), query=True, label="query gradients")

    def preconditioned_queries(self, query: Any, ids: Sequence | None = None) -> tuple[Tensor, list]:
        """((H + λI)⁻¹ g_q rows [n_query, width], query ids): the score is their dot product with the
        training rows (compressed gradients when `compress` is set); used by the FAISS index."""
        self._check_fitted()
        examples = self._examples(query, ids, "query")
        with eval_mode(self.model):
            check_batch(self.fn_, examples.data, "query")
            return precondition(self.solver_, self._query_rows(examples)), list(examples.ids)

    def training_rows(self):
        """(offset, rows) blocks of the training gradients as scored (compressed when `compress` is set)."""
        self._check_fitted()
        return self._train_blocks()

    def _low_rank(self):
        low_rank = getattr(self.solver_, "low_rank", None)
        return low_rank() if low_rank is not None else None

    def _factored_scorer(self, examples: Examples):
        layers = self.factor_layers_
        qf = factor_batch(self.fn_, layers, examples.data, query=True)
        blocks = factor_blocks(self.fn_, layers, self.train_examples_, self._factor_rows(), progress=self.progress)
        if isinstance(self.solver_, IdentitySolver):
            return (lambda f: similarity(qf, f)), blocks
        bases = self._eigenbasis()
        if bases is not None:
            mats = eigen_query_matrices(qf, bases)
            return (lambda f: score_with_matrices(mats, rotate(f, bases))), blocks
        low = self._low_rank()
        if low is not None:
            U, w = low
            umats = layer_matrices(layers, self.space_, U.T.contiguous())
            QUw = score_with_matrices(umats, qf).T * w  # g_q·u_m from factors, no flat query gradients
            return (lambda f: QUw @ score_with_matrices(umats, f)), blocks
        PQ = precondition(self.solver_, flatten_factors(layers, self.space_, qf))
        mats = layer_matrices(layers, self.space_, PQ)
        return (lambda f: score_with_matrices(mats, f)), blocks

    def _factor_rows(self) -> int:
        return max(1, min(self.batch_size, 128))

    def _meta(self) -> dict:
        return {"curvature": self.curvature_.describe() if hasattr(self.curvature_, "describe") else {},
                "solver": self.solver_.describe(), "damping": float(self.damping), "task": self.task.describe(),
                "n_params": self.space_.numel}

    # ----- scoring --------------------------------------------------------------------------
    def score(self, query: Any, ids: Sequence | None = None) -> Scores:
        """The full (n_query, n_train) influence matrix with ids."""
        if self.memory is not None and getattr(self, "train_examples_", None) is not None:
            n_query = len(self._examples(query, ids, "query"))
            memory.check_attributor(self, self.train_examples_, n_query, full_scores=True)
        score_block, blocks, qids = self._block_scorer(query, ids)
        with eval_mode(self.model):
            if self.partition_ is not None:  # torch.distributed: every rank's columns, in global order
                values = distributed.gather_columns(self._shard_scores(score_block, blocks, len(qids)), self.partition_)
                return Scores(values.detach(), qids, list(self.partition_.ids), self._meta())
            values = score_matrix(score_block, blocks, self.n_train_)
        return Scores(values.detach(), qids, list(self.train_ids_), self._meta())

    def _shard_scores(self, score_block, blocks, n_query: int) -> Tensor:
        """score_matrix over this rank's shard, which may be empty when there are more ranks than examples."""
        if self.n_train_ == 0:
            return torch.zeros(n_query, 0, dtype=self._compute_dtype, device=next(self.model.parameters()).device)
        return score_matrix(score_block, blocks, self.n_train_).detach()

    def top_k(self, query: Any, k: int, ids: Sequence | None = None, largest: bool = True) -> tuple[Tensor, Tensor]:
        """(values, indices) of the k largest scores per query, streamed over training blocks."""
        if not isinstance(k, int) or k <= 0:
            raise InputError(f"k must be a positive integer, got {k!r}")
        score_block, blocks, qids = self._block_scorer(query, ids)
        with eval_mode(self.model):
            if self.partition_ is not None:  # merge every rank's top-k candidates
                local = score_top_k(score_block, blocks, min(k, self.n_train_), largest) if self.n_train_ else \
                    (torch.zeros(len(qids), 0, dtype=self._compute_dtype), torch.zeros(len(qids), 0, dtype=torch.long))
                return distributed.merge_top_k(*local, self.partition_, k, largest)
            return score_top_k(score_block, blocks, min(k, self.n_train_), largest)

    def self_influence(self) -> Tensor:
        """(n_train,) g_iᵀ (H + λI)⁻¹ g_i; large values flag unusual or mislabelled examples."""
        self._check_fitted()
        if self.partition_ is not None:
            return self._sharded_per_example(lambda PG, G: (PG * G).sum(1))
        with eval_mode(self.model):
            if self._factored():
                blocks = factor_blocks(self.fn_, self.factor_layers_, self.train_examples_, self._factor_rows(),
                                       progress=self.progress)
                if isinstance(self.solver_, IdentitySolver):
                    return torch.cat([self_similarity(f) for _, f in blocks])
                bases = self._eigenbasis()
                if bases is not None:
                    return torch.cat([eigen_self_influence(f, bases) for _, f in blocks])
                low = self._low_rank()
                if low is not None:
                    umats = layer_matrices(self.factor_layers_, self.space_, low[0].T.contiguous())
                    return torch.cat([(score_with_matrices(umats, f).square() * low[1][:, None]).sum(0)
                                      for _, f in blocks])
            return self_scores(self.solver_, self._train_blocks(), self.n_train_)

    def summed_score(self, query: Any, ids: Sequence | None = None) -> Tensor:
        """(n_train,) Σ_q score[q, i] over a query set with one solve: aggregate influence on that set."""
        self._check_fitted()
        examples = self._examples(query, ids, "query")
        with eval_mode(self.model):
            check_batch(self.fn_, examples.data, "query")
            if self.compressor_ is not None:
                q = compressed_rows(self.fn_, self.compressor_, self.factor_layers_, examples.data, query=True).sum(0)
            else:
                q = sum(g.sum(0) for _, g in gradient_blocks(self.fn_, examples, self._rows(), query=True))
            pq = precondition(self.solver_, q[None])
            if self.partition_ is not None:
                return distributed.gather_columns(self._shard_scores(lambda G: pq @ G.T, self._train_blocks(), 1),
                                                  self.partition_)[0]
            return score_matrix(lambda G: pq @ G.T, self._train_blocks(), self.n_train_)[0].detach()

    def inverse_grad_norms(self) -> Tensor:
        """(n_train,) ‖(H + λI)⁻¹ g_i‖, the θ-relative (RelatIF) normaliser, one block of solves at a time."""
        self._check_fitted()
        if self.partition_ is not None:
            return self._sharded_per_example(lambda PG, G: PG.norm(dim=1))
        with eval_mode(self.model):
            return score_matrix(lambda G: precondition(self.solver_, G).norm(dim=1)[None], self._train_blocks(),
                                self.n_train_)[0].detach()

    def _sharded_per_example(self, fn) -> Tensor:
        """(n_train,) fn((H + λI)⁻¹ g_i, g_i) over every rank's shard, gathered in global order."""
        width = self.compressor_.k_ if self.compressor_ is not None else self.space_.numel
        with eval_mode(self.model):
            local = distributed.map_preconditioned(self.solver_, self._train_blocks(), width, self._compute_dtype, fn)
        return distributed.gather_vector(local.detach(), self.partition_)

    # ----- persistence ----------------------------------------------------------------------
    def _config(self) -> dict:
        def name(x: Any) -> Any:
            return x if isinstance(x, (str, int, float, type(None))) else repr(x)
        return {"params": name(self.params) if not isinstance(self.params, (list, tuple)) else list(self.params),
                "curvature": name(self.curvature), "solver": self.solver_.config(), "damping": float(self.damping),
                "batch_size": self.batch_size, "seed": self.seed, "task": self.task.describe()}

    def save(self, path: str | Path) -> None:
        """Save the fitted state (config, model fingerprint, gradients, solver state) to one file.

        A compressed attributor fitted with `store=` saves its k × k curvature and a pointer to the
        store instead of the training data: `load` then scores new queries from the store alone.
        """
        self._check_fitted()
        save_state(self, path)

    @classmethod
    def load(cls, path: str | Path, model: nn.Module, task: Task, **overrides: Any) -> "Attributor":
        """Restore a saved attributor for `model`; refuses a model whose weights differ."""
        return load_state(cls, path, model, task, **overrides)

"""K-FAC and EK-FAC: block-diagonal Kronecker approximations of the mean-loss GGN/Fisher.

One block per nn.Linear / nn.Conv2d layer, covering the matrix M = [W | b] of shape
[out, d_in (+1)] (the bias is a column fed by a constant 1 input). In ParamSpace's row-major
flat order vec(M)[o·d + j] the block is ``torch.kron(S, A)``:

    A = (1/N_pos) Σ_{i,t} a_{i,t} a_{i,t}ᵀ      (layer inputs, N_pos = Σ_i T_i positions)
    S = (1/n)     Σ_{i,r,t} δ_{i,r,t} δ_{i,r,t}ᵀ (output gradients of the pseudo-losses r)

T_i is 1 for a Linear layer on [B, in] inputs and the number of spatial positions (or extra
leading dims, or repeated calls) otherwise: this is "K-FAC expand" (Eschenhagen et al. 2023),
exact for a single layer whose every output position is a model output. The pseudo output
gradients r are (`fisher=`): "ggn" the R columns of the output-Hessian square root (exact
GGN for a single dense layer on one example), "sampled" one label drawn from the model per
example (true Fisher, seeded), "empirical" the true-label loss gradient.

EK-FAC keeps the eigenbases Q_S, Q_A and replaces Λ_S ⊗ Λ_A by the corrected eigenvalues
Λ*[o, j] = (1/n) Σ_{i,r} (Q_Sᵀ G_{i,r} Q_A)[o, j]², G_{i,r} = Σ_t δ_{i,r,t} a_{i,t}ᵀ the
per-example layer gradient (George et al. 2018; a second pass over the data). Factors
accumulate in float64 and are eigendecomposed in float64; products are applied in the model's
dtype. K-FAC multiplies by S M A directly and eigendecomposes only for `inverse`. "sampled"
draws one uniform per example position from the seed, so draws do not depend on the batch size.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import InputError, NumericalError, UnsupportedLayerError
from ..grads import ModelFunction, eval_mode
from ..inputs import Examples
from ..task import batch_size_of, sampled_output_grads
from .operator import LinearOperator

FISHER_TYPES = ("ggn", "sampled", "empirical")
_CHUNK_ELEMS = 1 << 22  # per-example rotated gradients held at once in the EK-FAC pass (32 MB)
_F64 = torch.float64


@dataclass(eq=False)
class KFACLayer:
    """One Kronecker block: which flat entries it covers, and its fitted factors (float64)."""

    name: str
    module: nn.Module
    weight: str | None  # flat-space name of the weight, or None when only the bias is selected
    bias: str | None
    out: int
    d_in: int  # weight columns: in_features, or C_in·kh·kw for a convolution
    A: Tensor | None = None
    S: Tensor | None = None
    QA: Tensor | None = None
    QS: Tensor | None = None
    eigenvalues: Tensor | None = None  # [out, d_a]: Λ_S ⊗ Λ_A (K-FAC) or Λ* (EK-FAC)
    positions: int = 0  # Σ_i T_i seen while fitting
    calls: list = field(default_factory=list)

    @property
    def d_a(self) -> int:
        return (self.d_in if self.weight is not None else 0) + (self.bias is not None)


def _unsupported(name: str, module: nn.Module, why: str) -> UnsupportedLayerError:
    return UnsupportedLayerError(
        f"K-FAC/EK-FAC cannot handle parameter {name!r} of a {type(module).__name__} module ({why}); "
        "use curvature='ggn'/'hessian' or restrict params= to nn.Linear/nn.Conv2d layers")


def resolve_layers(model: nn.Module, names: tuple[str, ...]) -> list[KFACLayer]:
    """Map each selected parameter to its Linear/Conv2d layer; raise UnsupportedLayerError otherwise."""
    layers: dict[str, KFACLayer] = {}
    for name in names:
        path, _, attr = name.rpartition(".")
        module = model.get_submodule(path)
        if not isinstance(module, (nn.Linear, nn.Conv2d)) or type(module).forward not in (
                nn.Linear.forward, nn.Conv2d.forward):
            raise _unsupported(name, module, "only plain nn.Linear and nn.Conv2d layers are supported")
        if attr not in ("weight", "bias") or getattr(module, attr) is None:
            raise _unsupported(name, module, f"{attr!r} is not the layer's weight or bias")
        if isinstance(module, nn.Conv2d) and (module.groups != 1 or module.padding_mode != "zeros"):
            raise _unsupported(name, module, "grouped convolutions and non-zero padding modes are not supported")
        if path not in layers:
            w = module.weight
            layers[path] = KFACLayer(path, module, None, None, int(w.shape[0]), int(w[0].numel()))
        setattr(layers[path], attr, name)
    return list(layers.values())


def _unfold(conv: nn.Conv2d, x: Tensor) -> Tensor:
    """Conv2d input [B, C, H, W] -> patches [B, L, C·kh·kw] in the weight's column order."""
    padding = conv.padding
    if isinstance(padding, str):
        if padding == "same":
            pads = []
            for k, d in zip(reversed(conv.kernel_size), reversed(conv.dilation)):
                total = d * (k - 1)
                pads += [total // 2, total - total // 2]
            x = F.pad(x, pads)
        padding = 0
    cols = F.unfold(x, conv.kernel_size, dilation=conv.dilation, padding=padding, stride=conv.stride)
    return cols.transpose(1, 2)


class KFAC(LinearOperator):
    """Block-diagonal K-FAC (or EK-FAC with `eigen_corrected=True`) of the mean training loss."""

    def __init__(self, fn: ModelFunction, examples: Examples, batch_size: int = 512, seed: int = 0,
                 eigen_corrected: bool = False, fisher: str = "ggn"):
        p0 = next(iter(fn.params.values()))
        super().__init__(fn.space.numel, p0.dtype, p0.device)
        if fisher not in FISHER_TYPES:
            raise InputError(f"unknown fisher={fisher!r} for K-FAC; choose one of {', '.join(FISHER_TYPES)}")
        task = fn.task
        if fisher == "ggn" and task.output_hessian_sqrt is None:
            raise InputError("K-FAC with fisher='ggn' needs a task with an output Hessian (Task.classification() "
                             "or Task.regression()); pass fisher='empirical' for a custom task")
        if fisher == "sampled" and task.sampled_output_grad is None:
            raise InputError("K-FAC with fisher='sampled' needs a task that can sample labels; "
                             "pass fisher='empirical' for a custom task")
        if len(examples) == 0:
            raise InputError("the curvature set is empty; pass training data (or a larger sampler budget)")
        self.layers = resolve_layers(fn.model, fn.space.names)
        self.fn, self.fisher, self.seed = fn, fisher, int(seed)
        self.eigen_corrected, self.n, self.batch_size = bool(eigen_corrected), len(examples), int(batch_size)
        self._cast: dict = {}
        self._slots = {n: (o, s, shape) for n, o, s, shape in
                       zip(fn.space.names, fn.space.offsets, fn.space.sizes, fn.space.shapes)}
        self._fit(examples)

    # ----- capturing layer inputs and output gradients -------------------------------------
    def _layer_inputs(self, layer: KFACLayer, B: int) -> Tensor:
        parts = []
        for x, _ in layer.calls:
            if x.shape[0] != B:
                raise UnsupportedLayerError(
                    f"layer {layer.name!r} received an input with leading size {x.shape[0]}, not the batch size {B}; "
                    "K-FAC needs the example axis first in every Linear/Conv2d input; use curvature='ggn'")
            a = _unfold(layer.module, x) if isinstance(layer.module, nn.Conv2d) else x.reshape(B, -1, x.shape[-1])
            parts.append(a.to(_F64))
        a = torch.cat(parts, 1) if parts else torch.zeros(B, 0, layer.d_in, dtype=_F64, device=self.device)
        if layer.weight is None:
            a = a[..., :0]
        if layer.bias is not None:
            a = torch.cat([a, a.new_ones(*a.shape[:-1], 1)], -1)
        return a

    @staticmethod
    def _layer_deltas(layer: KFACLayer, grads: list[Tensor | None], B: int) -> Tensor:
        parts = []
        for (_, out), g in zip(layer.calls, grads):
            g = torch.zeros_like(out) if g is None else g
            g = g.reshape(B, layer.out, -1).transpose(1, 2) if isinstance(layer.module, nn.Conv2d) \
                else g.reshape(B, -1, layer.out)
            parts.append(g.to(_F64))
        return torch.cat(parts, 1) if parts else torch.zeros(B, 0, layer.out, dtype=_F64,
                                                              device=layer.module.weight.device)

    def _passes(self, i: int, batch) -> Iterator[tuple[list[Tensor], list[Tensor]]]:
        """Per pseudo output-gradient r: layer inputs [B, T, d_a] and output gradients [B, T, out]."""
        fn, task, B = self.fn, self.fn.task, batch_size_of(batch)
        for layer in self.layers:
            layer.calls = []
        hooks = [l.module.register_forward_hook(lambda m, inp, out, l=l: l.calls.append((inp[0].detach(), out)))
                 for l in self.layers]
        try:
            with torch.enable_grad():
                if self.fisher == "empirical":
                    root = task.train_loss(fn.model, batch)
                    pseudo = [torch.ones_like(root)]
                else:
                    root = task.forward(fn.model, batch)
                    if self.fisher == "ggn":
                        L = task.output_hessian_sqrt(root.detach(), batch)
                        pseudo = [L[..., r].reshape(root.shape) for r in range(L.shape[-1])]
                    else:
                        start = i * self.batch_size  # batches are contiguous slices
                        pseudo = [sampled_output_grads(task, root.detach(), batch, self.seed, start).reshape(root.shape)]
        finally:
            for h in hooks:
                h.remove()
        a = [self._layer_inputs(l, B) for l in self.layers]
        outs = [(li, ci, o) for li, l in enumerate(self.layers) for ci, (_, o) in enumerate(l.calls)
                if o.requires_grad]
        for k, p in enumerate(pseudo):
            got = torch.autograd.grad(root, [o for *_, o in outs], p.to(root.dtype),
                                      retain_graph=k < len(pseudo) - 1, allow_unused=True) if outs else []
            per: list[list] = [[None] * len(l.calls) for l in self.layers]
            for (li, ci, _), g in zip(outs, got):
                per[li][ci] = g
            yield a, [self._layer_deltas(l, per[li], B) for li, l in enumerate(self.layers)]
        for layer in self.layers:
            layer.calls = []

    # ----- fitting -------------------------------------------------------------------------
    def _fit(self, examples: Examples) -> None:
        dev = self.device
        A = [torch.zeros(l.d_a, l.d_a, dtype=_F64, device=dev) for l in self.layers]
        S = [torch.zeros(l.out, l.out, dtype=_F64, device=dev) for l in self.layers]
        with eval_mode(self.fn.model):
            for i, (_, batch) in enumerate(examples.batches(self.batch_size)):
                for k, (a, d) in enumerate(self._passes(i, batch)):
                    for li, layer in enumerate(self.layers):
                        if k == 0:
                            a2 = a[li].reshape(-1, layer.d_a)
                            A[li] += a2.T @ a2
                            layer.positions += a2.shape[0]
                        d2 = d[li].reshape(-1, layer.out)
                        S[li] += d2.T @ d2
            for li, layer in enumerate(self.layers):
                if layer.positions == 0:
                    raise UnsupportedLayerError(
                        f"layer {layer.name!r} ({type(layer.module).__name__}) was never called through its forward "
                        "(e.g. nn.MultiheadAttention.out_proj), so K-FAC cannot see its inputs; "
                        "use curvature='ggn'/'hessian' or leave it out of params=")
                layer.A = A[li] / max(layer.positions, 1)
                layer.S = S[li] / self.n
            if self.eigen_corrected:
                self._eigen()
                self._correct(examples)

    def _eigen(self) -> None:
        """Eigenbases of the factors (float64 eigh), once; K-FAC needs them only for `inverse`."""
        for layer in self.layers:
            if layer.QA is None:
                if not bool(torch.isfinite(layer.A).all() and torch.isfinite(layer.S).all()):
                    raise NumericalError(f"the K-FAC factors of layer {layer.name!r} have NaN/Inf entries; a layer "
                                         "input or output gradient overflowed: check the inputs, the loss (e.g. "
                                         "log 0 or sqrt at 0) and the model weights")
                LA, layer.QA = torch.linalg.eigh(layer.A)
                LS, layer.QS = torch.linalg.eigh(layer.S)
                layer.eigenvalues = LS.clamp_min(0)[:, None] * LA.clamp_min(0)[None, :]

    def _correct(self, examples: Examples) -> None:
        """Second pass: EK-FAC eigenvalues, the second moments of gradients in the Kronecker eigenbasis."""
        lam = [torch.zeros(l.out, l.d_a, dtype=_F64, device=self.device) for l in self.layers]
        for i, (_, batch) in enumerate(examples.batches(self.batch_size)):
            rot_a, dsq = [], [None] * len(self.layers)
            for k, (a, d) in enumerate(self._passes(i, batch)):
                if k == 0:
                    rot_a = [a[li] @ l.QA for li, l in enumerate(self.layers)]
                for li, layer in enumerate(self.layers):
                    ra, rd = rot_a[li], d[li] @ layer.QS  # [B, T, d_a], [B, T, out]
                    if ra.shape[1] == 1:  # Q_Sᵀ G Q_A = (Q_Sᵀδ)(Q_Aᵀa)ᵀ: squares are outer products of squares
                        sq = rd[:, 0].square()
                        dsq[li] = sq if dsq[li] is None else dsq[li] + sq  # Σ_r before the product
                        continue
                    step = max(1, _CHUNK_ELEMS // (layer.out * layer.d_a))
                    for s in range(0, ra.shape[0], step):
                        G = torch.einsum("bto,btj->boj", rd[s:s + step], ra[s:s + step])
                        lam[li] += G.square().sum(0)
            for li, sq in enumerate(dsq):
                if sq is not None:
                    lam[li] += sq.T @ rot_a[li][:, 0].square()
        for li, layer in enumerate(self.layers):
            layer.eigenvalues = lam[li] / self.n

    # ----- products in the Kronecker eigenbasis --------------------------------------------
    def _gather(self, layer: KFACLayer, X: Tensor) -> Tensor:
        """Rows of X [P, m] belonging to the layer -> matrices [m, out, d_a]."""
        m, parts = X.shape[1], []
        for name, width in ((layer.weight, layer.d_in), (layer.bias, 1)):
            if name is not None:
                off, size, _ = self._slots[name]
                parts.append(X[off:off + size].T.reshape(m, layer.out, width))
        return torch.cat(parts, -1)

    def _scatter(self, layer: KFACLayer, M: Tensor, out: Tensor) -> None:
        col = 0
        for name, width in ((layer.weight, layer.d_in), (layer.bias, 1)):
            if name is not None:
                off, size, _ = self._slots[name]
                out[off:off + size] = M[..., col:col + width].reshape(M.shape[0], -1).T
                col += width

    def _map(self, B: Tensor, f: Callable[[KFACLayer, Tensor], Tensor]) -> Tensor:
        """Apply f(layer, M [m, out, d_a]) to each layer's rows of B [P, m] in B's dtype, columns in chunks."""
        out = torch.zeros_like(B)
        step = max(1, (4 * _CHUNK_ELEMS) // max(1, B.shape[0]))  # ~64 MB of float32 columns
        for s in range(0, B.shape[1], step):
            X = B[:, s:s + step]
            part = torch.zeros_like(X)
            for layer in self.layers:
                self._scatter(layer, f(layer, self._gather(layer, X)), part)
            out[:, s:s + step] = part
        return out

    def _eigen_scaled(self, layer: KFACLayer, M: Tensor, scale: Tensor) -> Tensor:
        """Q_S [scale ∘ (Q_Sᵀ M Q_A)] Q_Aᵀ, in M's dtype (the bases were computed in float64)."""
        QS, QA = self._bases(layer, M.dtype)
        return QS @ ((QS.T @ M @ QA) * scale.to(M.dtype)) @ QA.T

    def _bases(self, layer: KFACLayer, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        key = (id(layer), dtype)
        if key not in self._cast:
            self._cast[key] = (layer.QS.to(dtype), layer.QA.to(dtype))
        return self._cast[key]

    def _matmat(self, V: Tensor) -> Tensor:
        if self.eigen_corrected:
            return self._map(V, lambda l, M: self._eigen_scaled(l, M, l.eigenvalues))
        return self._map(V, lambda l, M: l.S.to(M.dtype) @ M @ l.A.to(M.dtype))  # (S ⊗ A) vec(M) = vec(S M A)

    def inverse(self, damping: float) -> Callable[[Tensor], Tensor]:
        """(K + λI)⁻¹ as a function of B [P, m]: exact, damping added once to the eigenvalues."""
        damping = float(damping)
        self._eigen()
        low = min(float(l.eigenvalues.min()) for l in self.layers) + damping
        if not low > 0:
            raise NumericalError(f"K-FAC + damping {damping:g} is singular (smallest eigenvalue {low:.3g}); "
                                 "use damping > 0, e.g. 1e-3 times the largest eigenvalue")
        scales = {id(l): 1.0 / (l.eigenvalues + damping) for l in self.layers}

        def solve(B: Tensor) -> Tensor:
            if B.dim() != 2 or B.shape[0] != self.size:
                raise InputError(f"K-FAC inverse of size {self.size} applied to a block of shape "
                                 f"{tuple(B.shape)}; expected [{self.size}, m]")
            return self._map(B, lambda l, M: self._eigen_scaled(l, M, scales[id(l)]))

        return solve

    def eigenbasis(self, damping: float, dtype: torch.dtype) -> dict[str, tuple[Tensor, Tensor, Tensor]]:
        """Per layer name: (Q_S, Q_A, 1/(Λ + λ)) in `dtype`, for scoring directly in the eigenbasis."""
        self.inverse(damping)  # validates the damping and computes the bases
        return {l.name: (*self._bases(l, dtype), (1.0 / (l.eigenvalues + float(damping))).to(dtype))
                for l in self.layers}

    def describe(self) -> dict:
        kind = "ekfac" if self.eigen_corrected else "kfac"
        return {"curvature": kind, "kind": kind, "fisher": self.fisher, "n": self.n, "size": self.size,
                "layers": [l.name for l in self.layers]}

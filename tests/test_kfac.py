"""K-FAC / EK-FAC against the exact GGN where they are exact, and their inverse against a dense solve."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from influent.curvature.exact import GGN
from influent.curvature.kfac import KFAC
from influent.errors import UnsupportedLayerError
from influent.grads import ModelFunction
from influent.inputs import as_examples
from influent.params import ParamSpace, select_params
from influent.task import Task

D64 = torch.float64
pytestmark = pytest.mark.filterwarnings("ignore:Using padding=.same.:UserWarning")


def make_fn(model, task, params="all"):
    model = model.to(D64).eval()
    space = params if isinstance(params, ParamSpace) else select_params(model, params)
    return ModelFunction(model, task, space)


def mlp(d=4, h=5, c=3, bias=True):
    return nn.Sequential(nn.Linear(d, h, bias=bias), nn.Tanh(), nn.Linear(h, c, bias=bias))


class ConvNet(nn.Module):
    def __init__(self, c_out=3, out=3, **conv):
        super().__init__()
        self.conv = nn.Conv2d(2, c_out, conv.pop("kernel_size", 3), **{"padding": 1, **conv})
        with torch.no_grad():
            width = self.conv(torch.zeros(1, 2, 4, 4)).numel()
        self.fc = nn.Linear(width, out)

    def forward(self, x):
        return self.fc(torch.tanh(self.conv(x)).flatten(1))


class ConvOnly(nn.Module):
    """Every output position of a single conv is a model output: K-FAC expand is exact here."""

    def __init__(self, bias):
        super().__init__()
        self.conv = nn.Conv2d(2, 1, 3, padding=1, stride=2, bias=bias)

    def forward(self, x):
        return self.conv(x).flatten(1)


def data(n, shape, c=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, *shape, generator=g, dtype=D64)
    y = torch.randint(0, c, (n,), generator=g) if c else torch.randn(n, 1, generator=g, dtype=D64)
    return as_examples((X, y))


def block_mask(fn, groups):
    """True inside the diagonal blocks of the given groups of parameter names."""
    P = fn.space.numel
    mask = torch.zeros(P, P, dtype=torch.bool)
    slots = dict(zip(fn.space.names, zip(fn.space.offsets, fn.space.sizes)))
    for group in groups:
        idx = torch.cat([torch.arange(slots[n][0], slots[n][0] + slots[n][1]) for n in group])
        mask[idx[:, None], idx[None, :]] = True
    return mask


# ----- 1. exact where the GGN is a Kronecker product ---------------------------------------
EXACT_CASES = [
    ("linear", True), ("linear", False), ("conv", True), ("conv", False),
]


@pytest.mark.parametrize("kind,bias", EXACT_CASES)
def test_single_layer_regression_is_exact(kind, bias):
    torch.manual_seed(0)
    if kind == "linear":
        model, ex = nn.Linear(6, 1, bias=bias), data(20, (6,))
    else:
        model = ConvOnly(bias)
        g = torch.Generator().manual_seed(1)
        X = torch.randn(7, 2, 4, 4, generator=g, dtype=D64)
        ex = as_examples((X, torch.randn(7, 4, generator=g, dtype=D64)))
    fn = make_fn(model, Task.regression())
    ggn = GGN(fn, ex).dense()
    kfac = KFAC(fn, ex, batch_size=8).dense()
    ekfac = KFAC(fn, ex, batch_size=3, eigen_corrected=True).dense()
    assert torch.allclose(kfac, ggn, atol=1e-10, rtol=0)
    assert torch.allclose(ekfac, ggn, atol=1e-10, rtol=0)


# ----- 2. one example: every layer's K-FAC block is the GGN block (rank argument) -----------
ONE_EXAMPLE_CASES = [
    ("single", lambda: nn.Linear(4, 3), [["weight", "bias"]]),
    ("single-nobias", lambda: nn.Linear(4, 3, bias=False), [["weight"]]),
    ("mlp", lambda: mlp(), [["0.weight", "0.bias"], ["2.weight", "2.bias"]]),
]


@pytest.mark.parametrize("eigen", [False, True])
@pytest.mark.parametrize("name,build,groups", ONE_EXAMPLE_CASES)
def test_one_example_matches_ggn_blocks(name, build, groups, eigen):
    torch.manual_seed(0)
    fn = make_fn(build(), Task.classification())
    ex = data(1, (4,), c=3)
    ggn = GGN(fn, ex).dense()
    op = KFAC(fn, ex, eigen_corrected=eigen)
    K = op.dense()
    mask = block_mask(fn, groups)
    assert torch.allclose(K, torch.where(mask, ggn, 0.0), atol=1e-12, rtol=0)
    lam = 0.1
    inv = op.inverse(lam)(K + lam * torch.eye(op.size, dtype=D64))
    assert torch.allclose(inv, torch.eye(op.size, dtype=D64), atol=1e-10)


def test_ekfac_eigenvalues_are_ggn_diagonal_in_kronecker_basis():
    """Λ* = diag(Qᵀ GGN_block Q), Q = Q_S ⊗ Q_A; hence EK-FAC is never further from the GGN than K-FAC."""
    torch.manual_seed(0)
    fn = make_fn(mlp(), Task.classification())
    ex = data(30, (4,), c=3)
    ggn = GGN(fn, ex).dense()
    ek = KFAC(fn, ex, batch_size=7, eigen_corrected=True)
    k = KFAC(fn, ex, batch_size=7)
    for layer in ek.layers:
        # eigenvectors q_S q_Aᵀ of the block, placed in the flat parameter space by the operator's own map
        E = torch.einsum("ok,jl->kloj", layer.QS, layer.QA).reshape(-1, layer.out, layer.d_a)
        V = torch.zeros(ek.size, E.shape[0], dtype=D64)
        ek._scatter(layer, E, V)
        proj = torch.diagonal(V.T @ ggn @ V).reshape(layer.out, layer.d_a)
        assert torch.allclose(layer.eigenvalues, proj, atol=1e-12)
    mask = block_mask(fn, [["0.weight", "0.bias"], ["2.weight", "2.bias"]])
    target = torch.where(mask, ggn, 0.0)
    err_ek, err_k = (ek.dense() - target).norm(), (k.dense() - target).norm()
    assert err_ek <= err_k + 1e-12 and err_k > 1e-6


def test_factors_match_definition_and_kron_order():
    """A, S from a for-loop; the block is torch.kron(S, A) in ParamSpace's row-major order."""
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    fn = make_fn(model, Task.classification())
    ex = data(5, (3,), c=2)
    X, _ = ex.data
    op = KFAC(fn, ex, batch_size=2)
    a = torch.cat([X, torch.ones(5, 1, dtype=D64)], 1)
    A = a.T @ a / 5
    with torch.no_grad():
        L = Task.classification().output_hessian_sqrt(model(X), ex.data)  # δ = L for a single layer
    S = torch.einsum("bcr,bdr->cd", L, L) / 5
    layer = op.layers[0]
    assert torch.allclose(layer.A, A, atol=1e-14) and torch.allclose(layer.S, S, atol=1e-14)
    K = torch.kron(S, A)  # over vec([W | b]) row-major
    perm = torch.tensor([r * 4 + j for r in range(2) for j in range(3)] + [r * 4 + 3 for r in range(2)])
    assert torch.allclose(op.dense(), K[perm][:, perm], atol=1e-13)


# ----- 3. the structured inverse is the inverse of the dense operator plus damping -----------
INVERSE_CASES = [
    ("mlp", lambda: mlp(), (4,), 3),
    ("conv-pad", lambda: ConvNet(), (2, 4, 4), 3),
    ("conv-same", lambda: ConvNet(kernel_size=2, padding="same"), (2, 4, 4), 3),
    ("conv-valid", lambda: ConvNet(padding=0), (2, 4, 4), 3),
]


@pytest.mark.parametrize("eigen", [False, True])
@pytest.mark.parametrize("name,build,shape,c", INVERSE_CASES)
def test_inverse_matches_dense_solve(name, build, shape, c, eigen):
    torch.manual_seed(0)
    fn = make_fn(build(), Task.classification())
    ex = data(12, shape, c=c)
    op = KFAC(fn, ex, batch_size=5, eigen_corrected=eigen)
    K, lam = op.dense(), 1e-2
    B = torch.randn(op.size, 3, dtype=D64)
    want = torch.linalg.solve(K + lam * torch.eye(op.size, dtype=D64), B)
    assert torch.allclose(op.inverse(lam)(B), want, rtol=1e-8, atol=1e-10)
    assert torch.allclose(op @ B, K @ B, atol=1e-12)  # symmetric: dense() symmetrisation is a no-op
    assert torch.linalg.eigvalsh(K).min() > -1e-12
    assert op.inverse(lam)(B.float()).dtype == torch.float32


def test_batch_size_does_not_change_the_result():
    torch.manual_seed(0)
    fn = make_fn(ConvNet(), Task.classification())
    ex = data(9, (2, 4, 4), c=3)
    for eigen in (False, True):
        a, b = (KFAC(fn, ex, batch_size=bs, eigen_corrected=eigen).dense() for bs in (2, 9))
        assert torch.allclose(a, b, atol=1e-12)


# ----- 4. Fisher variants -----------------------------------------------------------------
def test_sampled_fisher_is_seeded():
    torch.manual_seed(0)
    fn = make_fn(mlp(), Task.classification())
    ex = data(10, (4,), c=3)
    a, b, c = (KFAC(fn, ex, fisher="sampled", seed=s, eigen_corrected=True).dense() for s in (0, 0, 1))
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    assert KFAC(fn, ex, fisher="sampled").describe()["fisher"] == "sampled"


@pytest.mark.parametrize("eigen", [False, True])
def test_empirical_fisher_one_example_is_g_gT(eigen):
    torch.manual_seed(0)
    fn = make_fn(nn.Linear(4, 3), Task.classification())
    ex = data(1, (4,), c=3)
    g = fn.per_example_grads(ex.data)[0]
    op = KFAC(fn, ex, fisher="empirical", eigen_corrected=eigen)
    assert torch.allclose(op.dense(), torch.outer(g, g), atol=1e-12)


CONV_CONFIGS = [dict(), dict(kernel_size=2, padding="same"), dict(kernel_size=2, padding=0, stride=2),
                dict(padding=2, dilation=2, bias=False)]


@pytest.mark.parametrize("conv", CONV_CONFIGS)
def test_empirical_ekfac_eigenvalues_are_squared_rotated_gradients(conv):
    """Conv net, several examples: Λ* = (1/n) Σ_i (Q_Sᵀ G_i Q_A)² with G_i the true per-example gradient."""
    torch.manual_seed(0)
    fn = make_fn(ConvNet(**conv), Task.classification())
    ex = data(5, (2, 4, 4), c=3)
    G = fn.per_example_grads(ex.data).T  # [P, n]
    op = KFAC(fn, ex, fisher="empirical", eigen_corrected=True, batch_size=2)
    for layer in op.layers:
        rot = layer.QS.T @ op._gather(layer, G) @ layer.QA  # [n, out, d_a]
        assert torch.allclose(layer.eigenvalues, rot.square().mean(0), atol=1e-13)
    # K-FAC of the fc layer (one position per example) is exact with one example
    one = as_examples(tuple(t[:1] for t in ex.data))
    g = fn.per_example_grads(one.data)[0]
    fc = _idx(fn, ["fc.weight", "fc.bias"])
    K = KFAC(fn, one, fisher="empirical").dense()
    assert torch.allclose(K[fc][:, fc], torch.outer(g[fc], g[fc]), atol=1e-12)


# ----- 5. unsupported layers --------------------------------------------------------------
class WithNorm(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.norm = nn.LayerNorm(4)
        self.out = nn.Linear(4, 3)

    def forward(self, x):
        return self.out(self.norm(self.fc(x)))


class WithScale(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)
        self.scale = nn.Parameter(torch.ones(3))

    def forward(self, x):
        return self.fc(x) * self.scale


UNSUPPORTED = [
    (WithNorm, "all", "norm.weight", "LayerNorm"),
    (WithScale, "all", "scale", "WithScale"),
    (lambda: nn.Sequential(nn.Conv2d(2, 2, 3, groups=2)), "all", "0.weight", "Conv2d"),
    (lambda: nn.Sequential(nn.Conv1d(2, 2, 3)), "all", "0.weight", "Conv1d"),
]


@pytest.mark.parametrize("build,params,name,module", UNSUPPORTED)
def test_unsupported_layer_raises_before_work(build, params, name, module, monkeypatch):
    fn = make_fn(build(), Task.classification(), params)
    monkeypatch.setattr(KFAC, "_fit", lambda *a: pytest.fail("fit ran before the layer check"))
    with pytest.raises(UnsupportedLayerError) as err:
        KFAC(fn, data(4, (4,), c=3))
    msg = str(err.value)
    assert name in msg and module in msg and "curvature='ggn'" in msg


def test_supported_subset_of_model_with_norm():
    fn = make_fn(WithNorm(), Task.classification(), ["fc", "out"])
    assert KFAC(fn, data(4, (4,), c=3)).describe()["layers"] == ["fc", "out"]


# ----- 6. subsets and flat ordering --------------------------------------------------------
def _idx(fn, names):
    slots = dict(zip(fn.space.names, zip(fn.space.offsets, fn.space.sizes)))
    return torch.cat([torch.arange(slots[n][0], slots[n][0] + slots[n][1]) for n in names])


SUBSETS = [  # (selection, eigen-corrected too?) — K-FAC of a subset is the same sub-block of the full one
    (["2"], True),                      # last layer only
    (["0.weight", "2.weight"], False),  # weights of layers that have biases: no ones column
    (["0.bias"], False),                # bias only: A = [1]
]


@pytest.mark.parametrize("selection,eigen_too", SUBSETS)
def test_subset_is_sub_block(selection, eigen_too):
    torch.manual_seed(0)
    model = mlp()
    full_fn = make_fn(model, Task.classification())
    ex = data(11, (4,), c=3)
    sub_fn = make_fn(model, Task.classification(), selection)
    for eigen in (False, True) if eigen_too else (False,):
        full = KFAC(full_fn, ex, batch_size=4, eigen_corrected=eigen).dense()
        sub = KFAC(sub_fn, ex, batch_size=4, eigen_corrected=eigen).dense()
        idx = _idx(full_fn, sub_fn.space.names)
        assert torch.allclose(sub, full[idx][:, idx], atol=1e-12)


def test_permuted_flat_order():
    torch.manual_seed(0)
    model = mlp()
    fn = make_fn(model, Task.classification())
    names = ("2.bias", "0.weight", "2.weight", "0.bias")
    perm_fn = make_fn(model, Task.classification(), ParamSpace(names, tuple(dict(model.named_parameters())[n].shape
                                                                            for n in names)))
    ex = data(8, (4,), c=3)
    for eigen in (False, True):
        full = KFAC(fn, ex, eigen_corrected=eigen).dense()
        perm = KFAC(perm_fn, ex, eigen_corrected=eigen).dense()
        idx = _idx(fn, names)
        assert torch.allclose(perm, full[idx][:, idx], atol=1e-12)


def test_describe_and_train_mode_restored():
    fn = make_fn(mlp(), Task.classification())
    fn.model.train()
    with pytest.warns(UserWarning, match="eval mode"):
        op = KFAC(fn, data(6, (4,), c=3), eigen_corrected=True)
    assert fn.model.training
    assert all(p.grad is None for p in fn.model.parameters())
    assert op.describe() == {"curvature": "ekfac", "kind": "ekfac", "fisher": "ggn", "n": 6, "size": 43,
                             "layers": ["0", "2"]}


@pytest.mark.parametrize("name", ["kfac", "ekfac"])
def test_factory_and_direct_solver_use_the_structured_inverse(name):
    from influent.curvature import make_curvature
    from influent.solvers import Direct

    torch.manual_seed(0)
    fn = make_fn(mlp(), Task.classification())
    ex = data(10, (4,), c=3)
    op = make_curvature(name, fn, ex, batch_size=4)
    assert isinstance(op, KFAC) and op.describe()["kind"] == name
    solver = Direct().fit(op, 0.05)
    B = torch.randn(op.size, 2, dtype=D64)
    want = torch.linalg.solve(op.dense() + 0.05 * torch.eye(op.size, dtype=D64), B)
    assert solver.info_["method"] == "structured"
    assert torch.allclose(solver.solve(B), want, atol=1e-10)


def test_sampled_kfac_does_not_depend_on_the_batch_size():
    import torch
    from torch import nn

    from influent import Task
    from influent.curvature.kfac import KFAC
    from influent.grads import ModelFunction
    from influent.inputs import as_examples
    from influent.params import select_params
    from influent.testing.problems import blobs, seeded

    model = seeded(lambda: nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3)))
    fn = ModelFunction(model, Task.classification(), select_params(model))
    ex = as_examples(blobs(13, 5, 3))
    a, b = (KFAC(fn, ex, batch_size=bs, seed=3, eigen_corrected=True, fisher="sampled").dense() for bs in (4, 64))
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)

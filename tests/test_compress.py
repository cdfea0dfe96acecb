"""Gradient compressors: identities (k = P, sub-network), unbiasedness, factors = flat, seeds, errors."""
import math
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
from torch import nn
from torch.autograd.functional import hessian, jacobian
from torch.func import functional_call

import influent as inf
from influent.compress import (PCA, SJLT, Chain, Dropout, FactoredGaussian, Gaussian, Rademacher,
                               make_compressor)
from influent.factors import factor_batch, plan_factors
from influent.grads import ModelFunction
from influent.params import param_tensors
from influent.testing.problems import blobs, seeded
from influent.testing.reference import dense_hessian, exact_influence

X, Y = blobs(12, 6, 3, seed=3)
XQ, YQ = blobs(4, 6, 3, seed=4)
DAMPING = 1.0


def _mlp():
    return nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3))


def _problem(params="all", factory=_mlp):
    model, task = seeded(factory), inf.Task.classification()
    space = inf.select_params(model, params)
    fn, layers = ModelFunction(model, task, space), plan_factors(model, space)
    return SimpleNamespace(model=model, task=task, space=space, layers=layers, P=space.numel,
                           G=fn.per_example_grads((X, Y)), GQ=fn.per_example_grads((XQ, YQ), query=True),
                           F=factor_batch(fn, layers, (X, Y)) if layers else None)


@pytest.fixture(scope="module")
def p():
    return _problem()


def _squeeze(c, H):
    """C H Cᵀ for a symmetric H [P, P]: the curvature in the compressed space."""
    return c.apply(c.apply(H).T)


# ----- identities ---------------------------------------------------------------------------
@pytest.mark.parametrize("level", ["element", "neuron"])
def test_k_equal_p_is_exact_influence(p, level):
    c = Dropout(p.P, level=level, seed=5).fit(p.space, layers=p.layers)
    assert c.k_ == p.P and torch.equal(c.indices_.sort().values, torch.arange(p.P)) and (c.weights_ == 1).all()
    Z, ZQ = c.apply(p.G), c.apply(p.GQ)
    if level == "element":
        assert torch.equal(Z, p.G)
    torch.testing.assert_close(ZQ @ Z.T, p.GQ @ p.G.T, rtol=1e-13, atol=1e-15)
    H = dense_hessian(p.model, p.task, p.space, (X, Y))
    torch.testing.assert_close(exact_influence(ZQ, Z, _squeeze(c, H), DAMPING),
                               exact_influence(p.GQ, p.G, H, DAMPING), rtol=1e-10, atol=1e-12)


def test_element_dropout_is_the_subnetwork(p):
    c = Dropout(20, seed=3).fit(p.space)
    S, s = c.indices_, c.scale_
    assert s == math.sqrt(p.P / 20) and torch.equal(c.apply(p.G), s * p.G[:, S])
    # the sub-network in which only the coordinates S train, differentiated by autograd
    flat0 = p.space.flatten(param_tensors(p.model, p.space))

    def losses(u, batch, query=False):
        params = p.space.unflatten(flat0.index_add(0, S, u))
        return (p.task.query_loss if query else p.task.train_loss)(
            lambda x: functional_call(p.model, params, (x,)), batch)

    u0 = flat0.new_zeros(len(S))
    g, gq = jacobian(lambda u: losses(u, (X, Y)), u0), jacobian(lambda u: losses(u, (XQ, YQ), True), u0)
    H_sub = hessian(lambda u: losses(u, (X, Y)).mean(), u0)
    Z, ZQ = c.apply(p.G), c.apply(p.GQ)
    torch.testing.assert_close(ZQ @ Z.T, s**2 * (gq @ g.T), rtol=1e-12, atol=1e-14)
    # scale s acts as damping λ → λ/s²: compressed scores with s²λ equal the sub-network's exact IF
    HC = _squeeze(c, dense_hessian(p.model, p.task, p.space, (X, Y)))
    torch.testing.assert_close(exact_influence(ZQ, Z, HC, s**2 * DAMPING),
                               exact_influence(gq, g, H_sub, DAMPING), rtol=1e-10, atol=1e-12)


def test_element_split_is_proportional_and_keyed_by_name(p):
    for seed in range(20):
        c = Dropout(17, seed=seed).fit(p.space)
        counts = [int(((c.indices_ >= o) & (c.indices_ < o + n)).sum()) for o, n in zip(p.space.offsets, p.space.sizes)]
        assert sum(counts) == 17 and all(abs(m - 17 * n / p.P) < 1 for m, n in zip(counts, p.space.sizes))
    # the draw inside "0.weight" depends only on (seed, name) and its count: smaller sets nest in larger
    sub = inf.select_params(p.model, ["0.weight"])
    small = set(Dropout(4, seed=1).fit(sub).indices_.tolist())
    whole = Dropout(40, seed=1).fit(p.space).indices_
    assert small <= set(whole[whole < 30].tolist())


# ----- unbiasedness ---------------------------------------------------------------------------
RANDOM = {
    "dropout-element": lambda seed: Dropout(8, seed=seed),
    "dropout-neuron": lambda seed: Dropout(8, level="neuron", seed=seed),
    "gaussian": lambda seed: Gaussian(8, seed=seed),
    "rademacher": lambda seed: Rademacher(8, seed=seed),
    "sjlt": lambda seed: SJLT(8, seed=seed),
    "sjlt-s3": lambda seed: SJLT(8, seed=seed, s=3),
    "factored-gaussian": lambda seed: FactoredGaussian(8, seed=seed),
}


@pytest.mark.parametrize("name", RANDOM)
def test_inner_products_are_unbiased(p, name):
    V, N = p.G[[0, 5, 10]], 2000
    grams = torch.stack([(Z := RANDOM[name](seed).fit(p.space, layers=p.layers).apply(V)) @ Z.T
                         for seed in range(N)])
    target, mean, se = V @ V.T, grams.mean(0), grams.std(0) / math.sqrt(N)
    assert (se > 0).all() and ((mean - target).abs() <= 4 * se).all(), (mean, target, se)
    if name == "dropout-element":  # the test has power: dropout's usual 1/q scale (q = k/P) is biased
        q = 8 / p.P
        assert ((mean / q - target).abs() > 4 * se / q).any()


# ----- factors -------------------------------------------------------------------------------
FACTORED = {
    "neuron": lambda k: Dropout(k, level="neuron", seed=2),
    "element": lambda k: Dropout(k, seed=2),
    "factored-gaussian": lambda k: FactoredGaussian(k, seed=2),
    "chain": lambda k: Chain(Dropout(k, level="neuron", seed=2), Gaussian(3, seed=1)),
}


@pytest.mark.parametrize("params", ["all", ["0.weight", "2.bias"], ["2"]], ids=str)
@pytest.mark.parametrize("name", FACTORED)
def test_from_factors_equals_from_flat(name, params):
    q = _problem(params)
    c = FACTORED[name](max(3, q.P // 3)).fit(q.space, layers=q.layers)
    assert c.factored
    torch.testing.assert_close(c.apply_factors(q.layers, q.F), c.apply(q.G), rtol=1e-12, atol=1e-14)
    if name == "neuron":  # the kept entries are the crossings O × I of each layer; flat = element gather
        torch.testing.assert_close(c.apply(q.G), q.G[:, c.indices_] * c.weights_, rtol=0, atol=0)
        for (O, I), l in zip(c.kept_.values(), q.layers):
            d = l.d_in if l.weight else 0
            assert c.layer_scales_[l.name] == math.sqrt(l.out * l.d_a / (len(O) * len(I)))
            assert all(0 <= j <= d for j in I.tolist())


def test_neuron_map_from_names_equals_map_from_layers(p):
    a = Dropout(20, level="neuron", seed=4).fit(p.space, layers=p.layers)
    b = Dropout(20, level="neuron", seed=4).fit(p.space)
    assert torch.equal(a.indices_, b.indices_) and torch.equal(b.apply_factors(p.layers, p.F), a.apply(p.G))


# ----- determinism, chains, configs, memory -----------------------------------------------
ALL = {**{n: f for n, f in RANDOM.items()}, "pca": lambda seed: PCA(5, seed=seed),
       "chain": lambda seed: Chain(Dropout(30, seed=seed), SJLT(6, seed=seed + 1))}


@pytest.mark.parametrize("name", ALL)
def test_seed_determines_the_map(p, name):
    fit = lambda seed: ALL[name](seed).fit(p.space, p.G, layers=p.layers)  # noqa: E731
    c = fit(1)
    assert torch.equal(c.apply(p.G), fit(1).apply(p.G))
    if name != "pca":
        assert not torch.allclose(c.apply(p.G), fit(2).apply(p.G))
    # train and query gradients meet the same map, whatever the batch they come in
    both = c.apply(torch.cat([p.GQ, p.G]))
    torch.testing.assert_close(both[: len(p.GQ)], c.apply(p.GQ), rtol=1e-13, atol=1e-15)
    torch.testing.assert_close(both[len(p.GQ):], fit(1).apply(p.G), rtol=1e-13, atol=1e-15)
    # the config rebuilds the same compressor
    again = make_compressor(c.config()).fit(p.space, p.G, layers=p.layers)
    assert torch.equal(again.apply(p.G), c.apply(p.G))


def test_chain_feeds_each_size_into_the_next(p):
    chain = Chain(Dropout(30, seed=1), Gaussian(8, seed=2)).fit(p.space)
    expected = Gaussian(8, seed=2).fit(30).apply(Dropout(30, seed=1).fit(p.space).apply(p.G))
    assert chain.k_ == 8 and torch.equal(chain.apply(p.G), expected)
    assert make_compressor(None) is None and make_compressor(chain) is chain
    assert isinstance(make_compressor([{"name": "dropout", "k": 30}, {"name": "sjlt", "k": 4, "s": 2}]), Chain)
    # PCA with k = rank of the sample keeps every inner product inside its span
    r = int(torch.linalg.matrix_rank(p.G))
    pca = PCA(r).fit(p.space, p.G)
    torch.testing.assert_close(pca.components_.T @ pca.components_, torch.eye(r, dtype=torch.float64))
    torch.testing.assert_close(pca.apply(p.G) @ pca.apply(p.G).T, p.G @ p.G.T, rtol=1e-10, atol=1e-12)


def test_state_is_small(p):
    P, k = p.P, 8
    assert Gaussian(k).fit(p.space).state_bytes == 0 == Rademacher(k).fit(p.space).state_bytes
    assert SJLT(k).fit(p.space).state_bytes == 0
    assert Dropout(k).fit(p.space).state_bytes <= 16 * k
    assert PCA(k).fit(p.space, p.G).state_bytes == 8 * P * k


@pytest.mark.parametrize("k", [128, pytest.param(1024, marks=pytest.mark.slow)])
def test_gaussian_never_allocates_p_by_k(k):
    # P = 2e6: a dense float32 Φ would take 1 GiB (k = 128) or 8 GiB (k = 1024); peak memory stays far below
    code = (
        "import resource, torch\nfrom influent.compress import Gaussian, SJLT\ntorch.set_num_threads(1)\n"
        f"P, k = 2_000_000, {k}\nG = torch.randn(2, P)\nc = Gaussian(k, seed=0).fit(P)\nZ = c.apply(G)\n"
        "assert Z.shape == (2, k) and torch.isfinite(Z).all() and c.state_bytes == 0\n"
        "assert SJLT(k).fit(P).apply(G).shape == (2, k)\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    assert int(run.stdout.split()[-1]) < 768  # MiB


# ----- errors --------------------------------------------------------------------------------
def _layernorm_mlp():
    return nn.Sequential(nn.Linear(6, 5), nn.LayerNorm(5), nn.Linear(5, 3))


BAD = [
    ("k-zero", lambda p: Dropout(0).fit(p.space), inf.InputError, "[1, 53]"),
    ("k-too-big", lambda p: Gaussian(54).fit(p.space), inf.InputError, "[1, 53]"),
    ("k-not-int", lambda p: SJLT(2.5).fit(p.space), inf.InputError, "integer"),
    ("neuron-layernorm", lambda p: Dropout(9, level="neuron").fit(_problem(factory=_layernorm_mlp).space),
     inf.InputError, "1.weight, 1.bias"),
    ("neuron-lone-bias", lambda p: Dropout(2, level="neuron").fit(inf.select_params(p.model, ["2.bias"])),
     inf.InputError, "2.bias"),
    ("factored-layernorm", lambda p: FactoredGaussian(9).fit(_problem(factory=_layernorm_mlp).space),
     inf.InputError, "not supported"),
    ("neuron-k-below-layers", lambda p: Dropout(1, level="neuron").fit(p.space), inf.InputError, "[2, 53]"),
    ("bad-level", lambda p: Dropout(5, level="column").fit(p.space), inf.InputError, "level"),
    ("sjlt-s", lambda p: SJLT(4, s=5).fit(p.space), inf.InputError, "[1, k=4]"),
    ("apply-before-fit", lambda p: Dropout(5).apply(p.G), inf.NotFittedError, "fit"),
    ("factors-before-fit", lambda p: FactoredGaussian(5).apply_factors(p.layers, p.F), inf.NotFittedError, "fit"),
    ("wrong-width", lambda p: Gaussian(5).fit(p.space).apply(p.G[:, :10]), inf.InputError, "[B, 53]"),
    ("wrong-layers", lambda p: Dropout(5, level="neuron").fit(p.space).apply_factors(p.layers[:1], p.F[:1]),
     inf.InputError, "differ from the fitted"),
    ("pca-no-samples", lambda p: PCA(5).fit(p.space), inf.InputError, "sample gradients"),
    ("pca-k-above-n", lambda p: PCA(20).fit(p.space, p.G), inf.InputError, "[1, 12]"),
    ("unknown-name", lambda p: make_compressor({"name": "nope", "k": 3}), inf.InputError, "unknown compressor"),
    ("missing-k", lambda p: make_compressor({"name": "dropout"}), inf.InputError, "k required"),
    ("bare-string", lambda p: make_compressor("gaussian"), inf.InputError, "needs a size"),
]


@pytest.mark.parametrize("case", BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_refused_with_advice(p, case):
    _, call, error, text = case
    with pytest.raises(error) as info:
        call(p)
    assert isinstance(info.value, inf.InfluentError) and text in str(info.value), str(info.value)

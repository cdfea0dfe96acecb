"""Sequence models: the language-modeling task, GPT-2's transposed Conv1D layers, token factors in compressors."""
import pytest
import torch

import influent as inf
from influent.compress import Dropout, FactoredGaussian
from influent.compressed import compressed_rows
from influent.factors import factor_batch, flatten_factors, plan_factors
from influent.grads import ModelFunction
from influent.testing.problems import blobs, seeded
from influent.testing.sequence import Conv1D, TinyLM, token_batch

BATCH = token_batch()
COMPRESSORS = [
    ("neuron dropout", lambda: Dropout(20, level="neuron", seed=1)),
    ("element dropout", lambda: Dropout(20, level="element", seed=2)),
    ("factored gaussian", lambda: FactoredGaussian(20, seed=3)),
]


def _lm(params=("up.weight", "up.bias", "head.weight", "head.bias")):
    model, task = seeded(TinyLM), inf.Task.language_modeling()
    space = inf.select_params(model, list(params))
    return model, ModelFunction(model, task, space), plan_factors(model, space), space


def test_lm_loss_ignores_unscored_tokens():
    model, fn, _, _ = _lm()
    full = fn.task.train_loss(model, BATCH)
    for i in range(BATCH["input_ids"].shape[0]):
        keep = int((BATCH["labels"][i] != -100).sum())
        alone = fn.task.train_loss(model, {"input_ids": BATCH["input_ids"][i:i + 1, :keep]})
        torch.testing.assert_close(full[i], alone[0])


def test_conv1d_is_planned_as_transposed_linear():
    _, _, layers, _ = _lm()
    assert [(l.name, l.transposed, l.out, l.d_in) for l in layers] == [("up", True, 5, 6), ("head", False, 11, 5)]


def test_token_factors_flatten_to_the_dense_gradient():
    _, fn, layers, space = _lm()
    factors = factor_batch(fn, layers, BATCH, sequence=True)
    assert factors[0][0].dim() == 3
    torch.testing.assert_close(flatten_factors(layers, space, factors), fn.per_example_grads(BATCH))


def test_token_factors_are_refused_unless_asked_for():
    from influent.factors import NotFactorable
    _, fn, layers, _ = _lm()
    with pytest.raises(NotFactorable):
        factor_batch(fn, layers, BATCH)


@pytest.mark.parametrize("name,make", COMPRESSORS, ids=[c[0] for c in COMPRESSORS])
def test_compressing_token_factors_equals_compressing_dense_gradients(name, make):
    _, fn, layers, space = _lm()
    c = make().fit(space, layers=layers)
    torch.testing.assert_close(compressed_rows(fn, c, layers, BATCH), c.apply(fn.per_example_grads(BATCH)))


@pytest.mark.parametrize("name,make", COMPRESSORS, ids=[c[0] for c in COMPRESSORS])
def test_conv1d_row_factors_match_dense(name, make):
    X, Y = blobs(9, 4, 3, seed=5)
    model = seeded(lambda: torch.nn.Sequential(Conv1D(6, 4), torch.nn.Tanh(), torch.nn.Linear(6, 3)))
    space = inf.select_params(model, "all")
    fn, layers = ModelFunction(model, inf.Task.classification(), space), plan_factors(model, space)
    factors = factor_batch(fn, layers, (X, Y))
    G = fn.per_example_grads((X, Y))
    torch.testing.assert_close(flatten_factors(layers, space, factors), G)
    c = make().fit(space, layers=layers)
    torch.testing.assert_close(c.apply_factors(layers, factors), c.apply(G))


def test_attributor_scores_a_conv1d_model_like_the_dense_oracle():
    X, Y = blobs(10, 4, 3, seed=6)
    model = seeded(lambda: torch.nn.Sequential(Conv1D(5, 4), torch.nn.Tanh(), torch.nn.Linear(5, 3)))
    task = inf.Task.classification()
    kw = dict(curvature="identity", solver="direct", damping=1.0)
    factored = inf.Attributor(model, task, **kw).fit((X, Y)).score((X[:3], Y[:3])).values
    fn = ModelFunction(model, task, inf.select_params(model, "all"))
    dense = fn.per_example_grads((X[:3], Y[:3]), query=True) @ fn.per_example_grads((X, Y)).T / 2.0  # (I + 1·I)⁻¹
    torch.testing.assert_close(factored, dense)


def test_gpt2_neuron_dropout_from_token_factors_matches_dense():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=23, n_positions=8)
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(cfg).double().eval()
    space = inf.select_params(model, [r".*mlp\.c_(fc|proj)\.(weight|bias)"])
    fn = ModelFunction(model, inf.Task.language_modeling(), space)
    layers = plan_factors(model, space)
    assert layers is not None and all(l.transposed for l in layers)
    ids = torch.randint(0, 23, (3, 8), generator=torch.Generator().manual_seed(1))
    batch = {"input_ids": ids}  # HF's mask construction does not run under vmap (the dense oracle)
    c = Dropout(40, level="neuron", seed=0).fit(space, layers=layers)
    torch.testing.assert_close(compressed_rows(fn, c, layers, batch), c.apply(fn.per_example_grads(batch)))

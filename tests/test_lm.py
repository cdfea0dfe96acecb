"""Attribution over LM training documents: packing, completion-only queries, a Llama's MLP layers through
neuron dropout against a per-example-loop oracle, and the SmolLM2 demo's pipeline on a tiny Llama."""
import pytest
import torch

import influent as inf
from influent.compress import Dropout
from influent.errors import InputError
from influent.lm import completion_batch, pack_documents
from influent.testing.sequence import WordTokenizer

TEXTS = ["a good film", "bad acting and a thin plot", "one", "the best film of the year by far",
         "dull", "warm and funny", "two hours I will never get back", "moving"]
PAIRS = [("the plot was", "thin and dull"), ("a warm", "and funny film")]
MLP = r"model\.layers\.\d+\.mlp\.(gate_proj|up_proj|down_proj)\.weight"

PACKING = [  # (length, n): documents never exceed length, keep whole texts, stop at n
    (8, 100), (6, 3), (4, 100), (32, 2),
]


@pytest.mark.parametrize("length,n", PACKING)
def test_packed_documents_hold_whole_texts_within_the_length(length, n):
    tok = WordTokenizer()
    batch, docs = pack_documents(tok, TEXTS, length, n)
    assert batch["input_ids"].shape == (len(docs), length) and len(docs) <= n
    for row, mask, doc in zip(batch["input_ids"], batch["attention_mask"], docs):
        ids = tok(doc)["input_ids"] if len(tok(doc)["input_ids"]) <= length else tok(doc)["input_ids"][:length]
        assert int(mask.sum()) == len(ids) and row[: len(ids)].tolist() == ids
        assert (row[len(ids):] == tok.pad_token_id).all()
    packed = "\n".join(docs).split("\n")
    assert packed == TEXTS[: len(packed)]  # in order, none skipped


def test_completion_queries_score_only_the_completion():
    tok = WordTokenizer()
    batch = completion_batch(tok, PAIRS)
    for i, (p, c) in enumerate(PAIRS):
        n_p, n_c = len(p.split()), len(c.split())
        assert batch["labels"][i].ne(-100).sum() == n_c
        assert batch["labels"][i, n_p: n_p + n_c].tolist() == tok(c)["input_ids"]
        assert batch["attention_mask"][i].sum() == n_p + n_c
    with pytest.raises(InputError):
        completion_batch(tok, [("prompt", "")])
    with pytest.raises(InputError):
        pack_documents(tok, [], 8, 3)


def _loop_grads(model, task, space, batch):
    """Per-example gradients by one backward per example: the oracle (HF masks do not run under vmap)."""
    rows = []
    for i in range(batch["input_ids"].shape[0]):
        one = {k: v[i: i + 1] for k, v in batch.items()}
        g = torch.autograd.grad(task.train_loss(model, one).sum(), [dict(model.named_parameters())[n]
                                                                   for n in space.names])
        rows.append(torch.cat([t.reshape(-1) for t in g]))
    return torch.stack(rows)


def test_llama_mlp_neuron_dropout_keeping_everything_is_exact_influence():
    pytest.importorskip("transformers")
    from influent.testing.sequence import tiny_llama

    model, tok, task = tiny_llama(), WordTokenizer(), inf.Task.language_modeling()
    train, _ = pack_documents(tok, TEXTS, 8, 100)
    query = completion_batch(tok, PAIRS)
    space = inf.select_params(model, [MLP])
    attr = inf.Attributor(model, task, params=[MLP], curvature="empirical_fisher", damping=0.1,
                          compress=Dropout(space.numel, level="neuron", seed=0)).fit(train)
    G, Q = _loop_grads(model, task, space, train), _loop_grads(model, task, space, query)
    H = G.T @ G / G.shape[0] + 0.1 * torch.eye(G.shape[1], dtype=G.dtype)
    torch.testing.assert_close(attr.score(query).values, Q @ torch.linalg.solve(H, G.T), rtol=1e-6, atol=1e-9)


def test_smollm2_demo_pipeline_on_a_tiny_llama(tmp_path):
    pytest.importorskip("transformers")
    import json

    from influent.cli.demo_lm import COMPLETIONS, run_lm_demo
    from influent.testing.sequence import tiny_llama

    path = run_lm_demo(tmp_path, n_train=3, length=8, k=90, top=2, progress=False, say=lambda s: None,
                       model=(tiny_llama(dtype=torch.float32), WordTokenizer()), texts=TEXTS)
    assert path.exists()
    first = json.loads((tmp_path / "record.json").read_text())["queries"][0]
    p, c = COMPLETIONS[0]
    assert first["text"] == f"{p} ⟶ {c}"
    assert len(first["proponents"]) == 2 and all("\n" in e["text"] or e["text"] in TEXTS
                                                  for e in first["proponents"])
    stages = json.loads((tmp_path / "timings.json").read_text())["stages"]
    assert [s["name"].split()[0] for s in stages][:3] == ["loading", "packing", "fit:"]
    assert (tmp_path / "gradients").is_dir()  # a rerun resumes from the stored compressed rows
    run_lm_demo(tmp_path, n_train=3, length=8, k=90, top=2, progress=False, say=lambda s: None,
                model=(tiny_llama(dtype=torch.float32), WordTokenizer()), texts=TEXTS)
    second = json.loads((tmp_path / "record.json").read_text())["queries"][0]
    assert [e["id"] for e in second["proponents"]] == [e["id"] for e in first["proponents"]]

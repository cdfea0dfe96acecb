"""Gradient store: round trip, resume after a crash, refusal of foreign or corrupted data."""
import json

import pytest
import torch

from influent import ConfigMismatchError, InputError
from influent.inputs import as_examples
from influent.store import CorruptStoreError, GradientStore, fill_store

CONFIG = {"compress": "dropout", "k": 8}
ROWS = torch.randn(23, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))


def _fill(path, stop_after=None):
    store = GradientStore.open(path, config=CONFIG, fingerprint="abc", dim=8, dtype=torch.float64)
    ex = as_examples((ROWS,), ids=[f"id{i}" for i in range(23)])
    calls = []

    def compute(batch):
        if stop_after is not None and len(calls) == stop_after:
            raise KeyboardInterrupt  # the process dies here
        calls.append(1)
        return batch[0] * 1.0

    fill_store(store, ex.ids, ex.batches(5), compute)
    return store, len(calls)


def test_round_trip_keeps_rows_and_ids(tmp_path):
    store, _ = _fill(tmp_path / "s")
    again = GradientStore.open(tmp_path / "s")
    assert again.complete and again.ids == [f"id{i}" for i in range(23)]
    assert torch.equal(again.read_all(), ROWS)


def test_resume_after_interruption_is_identical_and_skips_done_work(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        _fill(tmp_path / "s", stop_after=2)
    partial = GradientStore.open(tmp_path / "s")
    assert partial.n_rows == 10 and not partial.complete
    store, computed = _fill(tmp_path / "s")
    assert computed == 3  # only the three missing shards
    assert torch.equal(store.read_all(), ROWS)


def test_leftover_temporary_file_is_never_read(tmp_path):
    store, _ = _fill(tmp_path / "s")
    (tmp_path / "s" / ".shard-00005.safetensors.tmp-1").write_bytes(b"half a shard")
    assert torch.equal(GradientStore.open(tmp_path / "s").read_all(), ROWS)


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete"])
def test_corrupted_shard_is_detected(tmp_path, damage):
    _fill(tmp_path / "s")
    shard = tmp_path / "s" / "shard-00001.safetensors"
    data = shard.read_bytes()
    if damage == "flip":
        shard.write_bytes(data[:-3] + bytes([data[-3] ^ 1]) + data[-2:])
    elif damage == "truncate":
        shard.write_bytes(data[: len(data) // 2])
    else:
        shard.unlink()
    with pytest.raises(CorruptStoreError, match="shard-00001"):
        GradientStore.open(tmp_path / "s").read_all()


@pytest.mark.parametrize("kwargs,match", [
    (dict(config=CONFIG, fingerprint="other", dim=8), "different model"),
    (dict(config={"compress": "gaussian", "k": 8}, fingerprint="abc", dim=8), "differs in compress"),
    (dict(config=CONFIG, fingerprint="abc", dim=9), "width"),
])
def test_foreign_store_is_refused(tmp_path, kwargs, match):
    _fill(tmp_path / "s")
    with pytest.raises(ConfigMismatchError, match=match):
        GradientStore.open(tmp_path / "s", **kwargs)


def test_bad_rows_and_missing_store(tmp_path):
    store = GradientStore.open(tmp_path / "s", config=CONFIG, fingerprint="abc", dim=8)
    with pytest.raises(InputError, match="rows must be"):
        store.append([1, 2], torch.zeros(2, 7))
    with pytest.raises(InputError, match="NaN"):
        store.append([1], torch.full((1, 8), float("nan")))
    with pytest.raises(InputError, match="no gradient store"):
        GradientStore.open(tmp_path / "missing")


def test_manifest_is_plain_json_with_checksums(tmp_path):
    _fill(tmp_path / "s")
    manifest = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert manifest["fingerprint"] == "abc" and len(manifest["shards"]) == 5
    assert all(len(s["sha256"]) == 64 for s in manifest["shards"])

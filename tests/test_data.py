"""Data loaders: IDX parsing and the error that names `make data`."""
import gzip

import numpy as np
import pytest

from influent.data import load_idx_set, read_idx
from influent.errors import DatasetNotAvailable, InputError


def _write_idx(path, array):
    header = bytes([0, 0, 8, array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
    data = header + array.astype(np.uint8).tobytes()
    (gzip.open if path.suffix == ".gz" else open)(path, "wb").write(data)


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_read_idx_round_trip(tmp_path, suffix):
    a = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    _write_idx(tmp_path / f"x{suffix}", a)
    np.testing.assert_array_equal(read_idx(tmp_path / f"x{suffix}"), a)


def test_load_idx_set_scales_and_adds_channel(tmp_path):
    folder = tmp_path / "fashion-mnist"
    folder.mkdir()
    _write_idx(folder / "t10k-images-idx3-ubyte.gz", np.full((5, 28, 28), 255))
    _write_idx(folder / "t10k-labels-idx1-ubyte.gz", np.arange(5))
    X, y = load_idx_set("fashion-mnist", "test", root=tmp_path)
    assert X.shape == (5, 1, 28, 28) and float(X.max()) == 1.0 and y.tolist() == [0, 1, 2, 3, 4]


def test_missing_set_names_make_data(tmp_path):
    with pytest.raises(DatasetNotAvailable, match="make data"):
        load_idx_set("mnist", root=tmp_path)


def test_bad_names_are_input_errors(tmp_path):
    with pytest.raises(InputError, match="unknown data set"):
        load_idx_set("cifar", root=tmp_path)
    with pytest.raises(InputError, match="split"):
        load_idx_set("mnist", "val", root=tmp_path)


def test_real_mnist_when_installed(mnist):
    X, y = mnist
    assert X.shape == (60000, 1, 28, 28) and y.bincount().tolist()[1] == 6742

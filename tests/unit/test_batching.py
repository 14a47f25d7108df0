"""Pure batch formation, merging and splitting."""

from __future__ import annotations

import numpy as np
import pytest

from medserve.scheduling.batching import batch_is_full, batch_key, merge, select_batch, split


def req(rows: int, width: int = 4, dtype: type = np.float32) -> dict[str, np.ndarray]:
    return {"x": np.arange(rows * width, dtype=dtype).reshape(rows, width)}


def test_key_ignores_batch_dim_but_not_other_dims_or_dtype() -> None:
    assert batch_key(req(1)) == batch_key(req(5))
    assert batch_key(req(1, width=4)) != batch_key(req(1, width=5))
    assert batch_key(req(1, dtype=np.float32)) != batch_key(req(1, dtype=np.float64))


def test_select_takes_compatible_requests_in_order_up_to_max() -> None:
    keys = [batch_key(req(1)), batch_key(req(1, 5)), batch_key(req(1)), batch_key(req(1))]
    assert select_batch([2, 1, 3, 4], keys, max_batch_size=8) == [0, 2]  # 2+3, then 4 would exceed 8
    assert select_batch([2, 1, 3, 3], keys, max_batch_size=8) == [0, 2, 3]
    assert select_batch([8, 1], keys[:2], max_batch_size=8) == [0]
    assert select_batch([], [], 8) == []


def test_select_never_lets_later_requests_overtake_one_that_does_not_fit() -> None:
    key = batch_key(req(1))
    assert select_batch([4, 5, 1], [key, key, key], max_batch_size=8) == [0]


def test_batch_is_full() -> None:
    assert batch_is_full(8, 8, [])
    assert not batch_is_full(7, 8, [])
    assert batch_is_full(4, 8, [2, 4])
    assert not batch_is_full(3, 8, [2, 4])
    assert batch_is_full(8, 8, [16])


def test_merge_and_split_roundtrip() -> None:
    parts = [req(1), req(3), req(2)]
    merged = merge(parts)
    assert merged["x"].shape == (6, 4)
    back = split({"y": merged["x"] * 2}, [1, 3, 2])
    for original, result in zip(parts, back):
        np.testing.assert_array_equal(result["y"], original["x"] * 2)
        assert result["y"].base is not None  # a view, not a copy


def test_merge_single_request_is_not_copied() -> None:
    only = req(2)
    assert merge([only]) is only


def test_merge_bytes_tensors() -> None:
    a = {"s": np.array([[b"a", b"b"]], dtype=object)}
    b = {"s": np.array([[b"c", b"d"]], dtype=object)}
    assert merge([a, b])["s"].tolist() == [[b"a", b"b"], [b"c", b"d"]]


def test_split_rejects_outputs_without_batch_dim() -> None:
    with pytest.raises(ValueError, match="batch"):
        split({"y": np.zeros((3, 2))}, [1, 1])

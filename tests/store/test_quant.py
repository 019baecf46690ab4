"""Precision codecs: exactness where promised, bounded error where lossy, and the error measures."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dpal_cache.store.quant import (
    LOG8_EPS,
    decode_int8,
    decode_log8,
    encode_int8,
    encode_log8,
    int8_scales,
    kl_per_row,
    relative_l2,
    units_apart,
)


def softmax_rows(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def test_int8_round_trip_error_is_half_a_step():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 17, 8)).astype(np.float32) * np.linspace(0.1, 5, 8, dtype=np.float32)
    scales = int8_scales(np.abs(x).max(axis=(0, 1)))
    q = encode_int8(x, scales)
    assert q.dtype == np.int8 and q.min() >= -127
    back = decode_int8(q, scales).numpy()
    assert np.array_equal(back, q.astype(np.float32) * scales)  # one multiply, as numpy does it
    err = np.abs(back - x)
    assert (err <= scales / 2 + 1e-6).all()  # rounding only: calibration covers every value
    assert relative_l2(x, back) < 1e-2


def test_int8_clips_beyond_calibration_and_handles_dead_channels():
    scales = int8_scales(np.array([1.0, 0.0], dtype=np.float32))
    assert scales[1] == 1.0  # a channel that was always 0 must not divide by zero
    q = encode_int8(np.array([[5.0, 0.0]], dtype=np.float32), scales)
    assert q.tolist() == [[127, 0]]


@pytest.mark.parametrize("temperature", [0.5, 2.0, 6.0])
def test_log8_kl_below_target(temperature):
    rng = np.random.default_rng(1)
    p = softmax_rows(rng.normal(size=(8, 64, 64)) * temperature)
    back = decode_log8(encode_log8(p)).numpy()
    assert np.allclose(back.sum(-1), 1.0, atol=1e-5)
    assert kl_per_row(p, back) < 1e-3


def test_decoders_run_on_torch_tensors_and_keep_their_device():
    codes = torch.tensor([[0, 1, 128, 255]], dtype=torch.uint8)
    back = decode_log8(codes)
    assert back.dtype == torch.float32 and back.device == codes.device and float(back.sum()) == pytest.approx(1.0)
    assert torch.equal(back, decode_log8(codes.numpy()))  # numpy in, the same values out
    q = torch.tensor([[-127, 3]], dtype=torch.int8)
    assert torch.equal(decode_int8(q, np.array([0.5, 2.0], dtype=np.float32)), torch.tensor([[-63.5, 6.0]]))


def test_log8_codes():
    p = np.array([0.0, LOG8_EPS / 2, LOG8_EPS, 1.0])
    assert encode_log8(p).tolist() == [0, 0, 1, 255]
    back = decode_log8(encode_log8(p), renormalise=False).numpy()
    assert back[0] == 0 and back[1] == 0
    assert back[3] == pytest.approx(1.0, rel=1e-6)


def test_error_measures():
    a = np.array([[0.5, 0.5]])
    assert kl_per_row(a, a) == 0.0
    assert kl_per_row(a, np.array([[0.25, 0.75]])) == pytest.approx(0.5 * np.log(2) + 0.5 * np.log(0.5 / 0.75))
    assert relative_l2(np.array([3.0, 4.0]), np.array([3.0, 4.0])) == 0.0
    assert relative_l2(np.array([3.0, 4.0]), np.zeros(2)) == pytest.approx(1.0)


def test_units_apart_counts_codes_and_fp16_steps_with_a_row_floor():
    codes = np.array([[0, 5, 255]], dtype=np.uint8)
    assert units_apart(codes, np.array([[1, 5, 253]], dtype=np.uint8)).tolist() == [[1, 0, 2]]
    q = np.array([-127, 3], dtype=np.int8)
    assert units_apart(q, q + np.int8(1)).tolist() == [1, 1]
    row = np.array([2.0, 0.75, 1e-4], dtype=np.float16)  # largest 2.0: floor 2**-5, spacing there 2**-15
    up = np.nextafter(row, np.float16(np.inf))
    assert units_apart(row, up).tolist()[:2] == [1.0, 1.0]  # one fp16 step of a value above the floor
    near_zero = units_apart(row, np.array([2.0, 0.75, 1e-4 + 2**-15], dtype=np.float16))[2]
    assert 0.9 < near_zero <= 1.0  # below the floor, a unit is the spacing at the floor, not at 1e-4
    assert units_apart(row, row).max() == 0
    with pytest.raises(ValueError, match="cannot compare"):
        units_apart(row, row.astype(np.float32))

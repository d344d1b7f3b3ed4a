"""Property-based tests (hypothesis) for every position encoder: random batch sizes, sentence
lengths and padding sides; outputs are finite, padding changes nothing, incremental == full."""
import functools

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import random_tokens
from test_position_encoders import COMBINATIONS, IDS, encode, position_model

SETTINGS = settings(max_examples=8, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
lengths = st.lists(st.integers(min_value=1, max_value=14), min_size=1, max_size=4)


@functools.lru_cache(maxsize=None)
def cached_model(combination):
    return position_model(*combination)


@pytest.mark.parametrize("combination", COMBINATIONS, ids=IDS)
@SETTINGS
@given(source=lengths, target_length=st.integers(min_value=1, max_value=10), left_pad=st.booleans(),
       seed=st.integers(min_value=0, max_value=2 ** 16))
def test_outputs_are_finite_and_do_not_depend_on_padding(combination, source, target_length, left_pad, seed):
    model, d = cached_model(combination)
    src = random_tokens(d, source, seed=seed, left_pad=left_pad)
    prev = random_tokens(d, [target_length] * len(source), seed=seed + 1)
    with torch.no_grad():
        out, _ = model(src, None, prev)
        encoded = encode(model, src)["encoder_out"][0]
        assert torch.isfinite(out).all() and torch.isfinite(encoded).all()
        for row, n in enumerate(source):
            real = src[row].ne(d.pad())
            alone = src[row:row + 1, real]
            torch.testing.assert_close(encoded[real.nonzero().squeeze(1), row],
                                       encode(model, alone)["encoder_out"][0][:, 0], atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(out[row], model(alone, None, prev[row:row + 1])[0][0], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("combination", COMBINATIONS, ids=IDS)
@SETTINGS
@given(source=lengths, target_length=st.integers(min_value=1, max_value=9), seed=st.integers(0, 2 ** 16))
def test_incremental_decoding_equals_full_decoding(combination, source, target_length, seed):
    model, d = cached_model(combination)
    src = random_tokens(d, source, seed=seed, left_pad=True)
    prev = random_tokens(d, [target_length] * len(source), seed=seed + 1)
    with torch.no_grad():
        enc = encode(model, src)
        full, _ = model.decoder(prev, encoder_out=enc)
        state = {}
        steps = [model.decoder(prev[:, :t + 1], encoder_out=enc, incremental_state=state)[0]
                 for t in range(target_length)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-4, rtol=1e-4)

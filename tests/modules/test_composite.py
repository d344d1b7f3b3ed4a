"""Composite position encoders (--pos-encoder a+b, modules/composite.py): what each part sets,
summed or applied together, and nothing else; bounded when its absolute part is bounded."""
import pytest
import torch

from floater_fairseq.modules.composite import position_encoder_class
from floater_fairseq.modules.floater import DissipativeDynamics
from floater_fairseq.modules.position_encoder import PositionCall

from conftest import build_model, random_tokens


def test_rope_floater_layer_positions_are_its_parts_positions():
    model, d, _ = build_model(extra=["--pos-encoder", "rope+floater"])
    composite = model.position_encoder
    src = random_tokens(d, [7, 4], left_pad=True)
    call = PositionCall.for_tokens("encoder", src, d.pad(), torch.float32)
    merged = composite.layer_positions(call)
    rope, floater = composite.part("rope").layer_positions(call), composite.part("floater").layer_positions(call)
    assert len(merged) == len(rope) == len(floater) == len(model.encoder.layers)
    for m, r, f in zip(merged, rope, floater):
        for name in ("q", "k", "v"):
            torch.testing.assert_close(getattr(m.self_attention, name), getattr(f.self_attention, name))
        torch.testing.assert_close(m.self_attention.cos, r.self_attention.cos)
        torch.testing.assert_close(m.self_attention.sin, r.self_attention.sin)
    assert composite.part("floater").name == "floater" and composite.part("alibi") is None
    assert [name for name, _ in model.named_parameters() if name.startswith("position_encoder.")] == \
        ["position_encoder.parts.floater." + name for name, _ in composite.part("floater").named_parameters()]


def test_rope_floater_with_zero_dynamics_is_rope_with_the_input_sinusoid():
    """p(0) = 0 and u == 0 keep FLOATER's biases at 0: the model is RoPE plus fairseq's input sinusoid
    (exact warm start from such a model)."""
    composite, d, _ = build_model(extra=["--pos-encoder", "rope+floater", "--floater-init-std", "0"], seed=3)
    rope, _, _ = build_model(extra=["--pos-encoder", "rope"], seed=4)
    for side in ("encoder", "decoder"):  # the input sinusoid that rope+floater keeps (parameter-free)
        getattr(rope, side).embed_positions = getattr(composite, side).embed_positions
    rope.load_state_dict({k: v for k, v in composite.state_dict().items() if not k.startswith("position_encoder.")})
    src, prev = random_tokens(d, [6, 3], left_pad=True), random_tokens(d, [5, 4], seed=2)
    composite.eval(), rope.eval()
    with torch.no_grad():
        torch.testing.assert_close(composite(src, None, prev)[0], rope(src, None, prev)[0], atol=1e-6, rtol=1e-5)


def test_rope_floater_biases_stay_bounded_whatever_the_parameters():
    """The dissipative part's bound |b_j(t)| <= max(|b_j(0)|, 1 / GAMMA_MIN) holds far past any training
    length, for arbitrary (large) parameters; the rotation is norm-preserving, so q and k stay bounded."""
    model, _, _ = build_model(extra=["--pos-encoder", "rope+floater", "--floater-step-size", "0.05"])
    signal = model.position_encoder.part("floater").signal
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in signal.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 3)
        table = signal.table(400)
    bound = torch.maximum(signal.initial_values.abs(), torch.tensor(1 / DissipativeDynamics.GAMMA_MIN))
    assert (table.abs() <= bound + 1e-4).all()


@pytest.mark.parametrize("name,message", [
    ("rope+nope", "unknown part"),
    ("rope+rope", "two or more different encoders"),
    ("none+rope", "other than 'none'"),
])
def test_bad_composites_name_the_problem(name, message):
    with pytest.raises(ValueError, match=message):
        position_encoder_class(name)


def test_two_input_embeddings_are_refused_at_build_time():
    with pytest.raises(ValueError, match="sinusoidal and learned both provide the input embedding"):
        build_model(extra=["--pos-encoder", "sinusoidal+learned", "--pos-blocks", "input"])


def test_the_cli_accepts_any_composite_and_refuses_a_bad_one(capsys):
    model, _, args = build_model(extra=["--pos-encoder", "alibi+floater"])
    assert args.pos_encoder == "alibi+floater" and set(model.position_encoder.parts) == {"alibi", "floater"}
    with pytest.raises(SystemExit):
        build_model(extra=["--pos-encoder", "rope+nope"])
    assert "unknown part(s) 'nope'" in capsys.readouterr().err


def test_rope_floater_without_input_sinusoid_and_zero_dynamics_is_exactly_rope():
    """The config row (--floater-no-input-sinusoid) at h == 0, p(0) = 0 is RoPE itself: a RoPE
    checkpoint warm-starts it exactly."""
    composite, d, _ = build_model(extra=["--pos-encoder", "rope+floater", "--floater-init-std", "0",
                                         "--floater-no-input-sinusoid"], seed=3)
    rope, _, _ = build_model(extra=["--pos-encoder", "rope"], seed=4)
    assert composite.encoder.embed_positions is None and composite.decoder.embed_positions is None
    rope.load_state_dict({k: v for k, v in composite.state_dict().items() if not k.startswith("position_encoder.")})
    src, prev = random_tokens(d, [6, 3], left_pad=True), random_tokens(d, [5, 4], seed=2)
    composite.eval(), rope.eval()
    with torch.no_grad():
        torch.testing.assert_close(composite(src, None, prev)[0], rope(src, None, prev)[0], atol=1e-6, rtol=1e-5)

"""Function-preserving rotations (``convert(..., rotate=...)``, :mod:`spikingjelly_mbe.conversion.rotation`):
the rotated float model equals the ANN on every supported family, the matrices are orthogonal, an
outlier channel of the residual stream is spread, and the errors for models and values it refuses."""
import copy

import pytest
import torch

from spikingjelly_mbe import convert
from spikingjelly_mbe.conversion.orthogonal import rotation, sylvester
from spikingjelly_mbe.conversion.rotation import MODES, rotate
from spikingjelly_mbe.conversion.zoo import build, main_output, make_batch

torch.set_num_threads(1)
pytestmark = pytest.mark.usefixtures("quiet_clamp_warnings")

SUPPORTED = ("llama", "llama_lm", "qwen2", "mistral", "gpt2", "dinov2", "vit_hf", "vit_hf_cls", "vit")


def run(model, batch, **kw):
    with torch.no_grad():
        return model(**batch, **kw) if isinstance(batch, dict) else model(batch, **kw)


def as_double(batch):
    if isinstance(batch, torch.Tensor):
        return batch.double()
    return {k: v.double() if v.is_floating_point() else v for k, v in batch.items()}


def relative_error(y, ref):
    return float((y - ref).abs().max() / ref.abs().max())


@pytest.mark.parametrize("family", SUPPORTED)
def test_rotated_float_model_equals_the_ann(family):
    ann = build(family, layers=2, hidden=32, heads=4).double()
    rotated = copy.deepcopy(ann)
    line = rotate(rotated, "hadamard")
    assert line.startswith("rotated (hadamard, d=32")
    assert not any(isinstance(m, torch.nn.LayerNorm) for m in rotated.modules())  # every norm made weightless RMSNorm
    batch = as_double(make_batch(family, 2))
    # Llama-style RMSNorm computes in float32 even in a float64 model: the ANN's own resolution there
    assert relative_error(main_output(run(rotated, batch)), main_output(run(ann, batch))) < 1e-5


def test_float32_rotation_is_exact_to_float32_tolerance():
    ann = build("gpt2", layers=2, hidden=48, heads=4)  # 48 = 16 x 3: a Kronecker Hadamard x random orthogonal
    rotated = copy.deepcopy(ann)
    rotate(rotated, "hadamard")
    batch = make_batch("gpt2", 2)
    assert relative_error(main_output(run(rotated, batch)), main_output(run(ann, batch))) < 1e-4
    assert ann.lm_head.weight is ann.transformer.wte.weight  # the ANN untouched: still tied
    assert rotated.lm_head.weight is not rotated.transformer.wte.weight


@pytest.mark.parametrize("kind", ["hadamard", "orthogonal"])
@pytest.mark.parametrize("n", [1, 16, 24, 48, 64, 576])
def test_rotation_matrices_are_orthogonal_and_seeded(kind, n):
    q = rotation(n, kind, torch.Generator().manual_seed(0))
    assert q.dtype == torch.float64 and q.shape == (n, n)
    assert torch.allclose(q @ q.T, torch.eye(n, dtype=torch.float64), atol=1e-12)
    assert torch.equal(q, rotation(n, kind, torch.Generator().manual_seed(0)))


def test_hadamard_of_a_power_of_two_spreads_every_channel_evenly():
    q = rotation(64, "hadamard", torch.Generator().manual_seed(3))
    assert torch.allclose(q.abs(), torch.full((64, 64), 64 ** -0.5, dtype=torch.float64))
    h = sylvester(8) * 8 ** 0.5
    assert set(h.flatten().tolist()) == {1.0, -1.0} and torch.equal(h @ h.T, 8 * torch.eye(8, dtype=torch.float64))


def peak_to_rms(model, batch):
    """Mean over tokens and blocks of max |h| / RMS(h) over the residual stream's channels."""
    hidden = torch.stack(run(model, batch, output_hidden_states=True).hidden_states[1:-1])
    return float((hidden.abs().amax(-1) / hidden.pow(2).mean(-1).sqrt()).mean())


@pytest.mark.parametrize("family", ["gpt2", "llama_lm"])
def test_an_outlier_channel_of_the_stream_is_spread(family):
    ann = build(family, layers=2, hidden=32, heads=2)
    embedding = ann.get_input_embeddings().weight
    with torch.no_grad():
        embedding[:, 3] += 40.0  # one channel of every token's stream 40 above the others
    rotated = copy.deepcopy(ann)
    rotate(rotated, "hadamard")
    batch = make_batch(family, 2)
    before, after = peak_to_rms(ann, batch), peak_to_rms(rotated, batch)
    assert before > 4.0 and after < 2.0, (before, after)


def with_value_outliers(model, factor=30.0, channel=1):
    """The same function with one value channel of head 0 ``factor`` times larger in every layer
    (its ``v_proj`` row times ``factor``, the ``o_proj`` input column divided by it)."""
    with torch.no_grad():
        for layer in model.encoder.layer:
            attention = layer.attention
            attention.v_proj.weight[channel] *= factor
            attention.v_proj.bias[channel] *= factor
            attention.o_proj.weight[:, channel] /= factor
    return model


def test_rotation_brings_a_converted_model_with_value_outliers_closer_to_its_ann():
    ann = with_value_outliers(build("dinov2", layers=2, hidden=32, heads=2))
    calib, batch = [make_batch("dinov2", 4, seed=1)], make_batch("dinov2", 4, seed=2)
    reference = main_output(run(ann, batch))
    errors = {}
    for mode in ("off", "hadamard"):
        snn = convert(ann, calib, T=8, rotate=mode)
        y = main_output(run(snn, batch))
        errors[mode] = float((y - reference).norm() / reference.norm())
    assert errors["hadamard"] < 0.85 * errors["off"], errors
    assert snn.spiking_report.rotation.startswith("rotated (hadamard")
    assert "rotation: rotated (hadamard" in str(snn.spiking_report)


def test_auto_leaves_a_post_norm_model_unrotated_and_says_why(caplog):
    ann = build("bert", layers=1, hidden=32, heads=2)
    batch = make_batch("bert", 2)
    with caplog.at_level("INFO", logger="spikingjelly_mbe.conversion"):
        snn = convert(ann, [batch], T=8, rotate="auto")
    assert snn.spiking_report.rotation.startswith("not rotated (rotate='auto'): BertForSequenceClassification")
    assert "post-norm" in caplog.text


def test_a_variant_its_layout_does_not_describe_is_refused_before_any_weight_changes():
    ann = build("vit_timm_qknorm_reg_avg", layers=1, hidden=32, heads=2)  # average pooling: a LayerNorm after the pool
    copied = copy.deepcopy(ann)
    assert rotate(copied, "auto").startswith("not rotated (rotate='auto'): VisionTransformer.fc_norm is not an identity")
    assert all(torch.equal(a, b) for a, b in zip(ann.state_dict().values(), copied.state_dict().values()))
    with pytest.raises(ValueError, match="rotate='orthogonal': VisionTransformer.fc_norm is not an identity"):
        rotate(copied, "orthogonal")


def test_an_explicit_rotation_of_an_unsupported_model_raises_naming_the_fix():
    ann = build("bert", layers=1, hidden=32, heads=2)
    with pytest.raises(ValueError, match=r"rotate='hadamard': BertForSequenceClassification has no rotation "
                                         r"layout.*Pass rotate='off' \(or 'auto'"):
        convert(ann, [make_batch("bert", 2)], T=8, rotate="hadamard")


@pytest.mark.parametrize("value", ["yes", True, None, "Hadamard"])
def test_a_bad_rotate_value_raises_naming_the_argument(value):
    with pytest.raises(ValueError, match=r"rotate must be one of \('off', 'auto', 'hadamard', 'orthogonal'\)"):
        convert(build("gpt2", layers=1), [make_batch("gpt2", 2)], T=8, rotate=value)
    assert MODES == ("off", "auto", "hadamard", "orthogonal")


def test_off_leaves_the_weights_as_they_are():
    ann = build("llama_lm", layers=1, hidden=32, heads=2)
    snn = convert(ann, [make_batch("llama_lm", 2)], T=8, rotate="off")
    assert snn.spiking_report.rotation == "not rotated (rotate='off')"
    assert torch.equal(snn.model.layers[0].self_attn.q_proj.layer.weight, ann.model.layers[0].self_attn.q_proj.weight)

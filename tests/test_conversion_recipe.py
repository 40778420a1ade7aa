"""Recipe plumbing: SpikingJelly converters, training-free proof, report, unsupported nonlinearities."""
import pytest
import torch
import torch.nn as nn
import transformers as hf
from spikingjelly.activation_based.ann2snn import ModuleConverter

import spikingjelly_mbe
from spikingjelly_mbe.conversion import (Calibration, MBETransformerRecipe, UnsupportedNonlinearityError, convert,
                                         rule_for)
from spikingjelly_mbe.conversion.zoo import agreement, build, main_output, make_batch
from spikingjelly_mbe.ops import (PiecewiseLinear, RectifiedActivation, SpikingActivation, SpikingMatmul, SpikingProduct,
                                  SpikingSoftmax)
from spikingjelly_mbe.ops.base import SpikingOp

torch.set_num_threads(1)
THREE = ("vit", "bert", "gpt2")


def run(model, batch):
    with torch.no_grad():
        return main_output(model(**batch) if isinstance(batch, dict) else model(batch))


@pytest.mark.parametrize("family", THREE + ("roberta", "llama", "dinov2"))
def test_training_free_original_untouched(family):
    ann = build(family)
    batch = make_batch(family, 4)
    before = {k: v.clone() for k, v in ann.state_dict().items()}
    attn_impl = getattr(getattr(ann, "config", None), "_attn_implementation", None)
    reference = run(ann, batch)
    snn = spikingjelly_mbe.convert(ann, calib_data=[batch])
    assert snn is not ann
    after = ann.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before), "an ANN parameter changed"
    assert torch.equal(run(ann, batch), reference), "the ANN's outputs changed"
    assert getattr(getattr(ann, "config", None), "_attn_implementation", None) == attn_impl
    assert not any(isinstance(m, SpikingActivation) for m in ann.modules())
    # the SNN reuses every weight unchanged, in its own copy (its weight layers driven by input spikes)
    linear = [p for p, m in ann.named_modules() if type(m).__name__ in ("Linear", "Conv1D", "Conv2d")]
    assert linear
    for path in linear:
        weight = snn.get_submodule(path).weight
        assert torch.equal(weight, before[f"{path}.weight"])
        assert weight.data_ptr() != ann.get_submodule(path).weight.data_ptr()


def test_module_converter_lifecycle_and_report():
    ann = build("bert")
    recipe = MBETransformerRecipe(T=16, N=4, calibration=[make_batch("bert", 4)])
    snn = ModuleConverter(recipe).convert(ann)
    report = snn.spiking_report
    assert report is recipe.report and snn.ann2snn_recipe == "mbe_transformer" and snn.time_steps == 16
    replaced = {e.path: e.target for e in report.replaced}
    assert replaced["bert.encoder.layer.0.intermediate.intermediate_act_fn"] == "RectifiedActivation"  # GELU
    assert replaced["bert.encoder.layer.1.output.LayerNorm"] == "SpikingLayerNorm"
    assert replaced["bert.pooler.activation"] == "SpikingActivation"  # pooler tanh
    assert replaced["bert.encoder.layer.0.attention.self.spiking_attention"] == "SpikingAttention"
    core = snn.get_submodule("bert.encoder.layer.0.attention.self.spiking_attention")
    assert isinstance(core.scores, SpikingMatmul) and isinstance(core.context, SpikingMatmul)
    assert isinstance(core.softmax, SpikingSoftmax)
    assert report.fallback == [] and report.fully_spiking
    assert "fully spike-driven: True" in str(report)
    # no float nonlinearity module survives outside the spiking operators
    ops = [p for p, m in snn.named_modules() if isinstance(m, SpikingOp)]
    floats = [p for p, m in snn.named_modules() if isinstance(m, (nn.LayerNorm, nn.Softmax, nn.Tanh))
              and not any(p.startswith(op + ".") for op in ops)]
    assert floats == []


def test_roberta_head_tanh_call_is_spiked():
    """RobertaClassificationHead calls torch.tanh inside its forward: a call-level site."""
    snn = convert(build("roberta"), calib_data=[make_batch("roberta", 4)])
    assert isinstance(snn.classifier.spiking_activation0, SpikingActivation)
    assert {e.path: e.source for e in snn.spiking_report.replaced}["classifier.spiking_activation0"] == "tanh"


def test_function_stored_as_attribute_is_spiked():
    """Audit row: BERT whose intermediate_act_fn is the plain function F.relu."""
    ann = build("bert")
    for layer in ann.bert.encoder.layer:
        del layer.intermediate.intermediate_act_fn  # a child module until now
        layer.intermediate.intermediate_act_fn = torch.nn.functional.relu
    batch = make_batch("bert", 4)
    snn = convert(ann, calib_data=[batch])
    relu = snn.bert.encoder.layer[0].intermediate.spiking_activation0
    assert isinstance(relu, PiecewiseLinear) and snn.spiking_report.fully_spiking
    assert {e.source for e in snn.spiking_report.replaced if "intermediate" in e.path} == {"relu", "Linear"}
    assert {e.target for e in snn.spiking_report.replaced if e.source == "Linear"} == {"SpikingWeightInput"}
    assert agreement(run(ann, batch), run(snn, batch))["cosine"] >= 0.999


def test_removed_names_are_gone():
    """The 0.1 aliases are removed: ``fx=`` is an unknown keyword, the old recipe and verb names do not exist."""
    import spikingjelly_mbe.conversion as conversion
    with pytest.raises(TypeError, match="fx"):
        convert(build("vit"), calib_data=[make_batch("vit", 2)], fx=True)
    for name in ("MBETransformerFXRecipe", "expose", "spike", "keep"):
        assert not hasattr(conversion, name)


class RunningActivation(nn.Module):
    """Not element-wise (each output depends on the row's earlier elements): no operator, not even a fit."""

    def forward(self, x):
        return x * torch.logcumsumexp(x, dim=-1)


def test_unsupported_nonlinearity_named_by_path_and_operation():
    ann = build("bert")
    for layer in ann.bert.encoder.layer:
        layer.intermediate.intermediate_act_fn = RunningActivation()
    with pytest.raises(UnsupportedNonlinearityError) as err:
        convert(ann, calib_data=[make_batch("bert", 2)])
    assert "bert.encoder.layer.0.intermediate.intermediate_act_fn: logcumsumexp" in str(err.value)
    snn = convert(ann, calib_data=[make_batch("bert", 2)], allow_float_fallback=True)
    fallback = {(e.path, e.source) for e in snn.spiking_report.fallback}
    assert fallback == {(f"bert.encoder.layer.{i}.intermediate.intermediate_act_fn", "logcumsumexp") for i in range(2)}
    assert not snn.spiking_report.fully_spiking
    # x * logcumsumexp(x) is also a product of two activations: that part is spiked
    assert isinstance(snn.bert.encoder.layer[0].intermediate.intermediate_act_fn.spiking_product0, SpikingProduct)


def test_unsupported_functional_call_in_a_plain_module():
    class Gate(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(8, 8)

        def forward(self, x):
            return torch.logcumsumexp(self.fc(x), dim=-1)

    model = nn.Sequential(nn.Linear(8, 8), Gate())
    with pytest.raises(UnsupportedNonlinearityError, match=r"1: logcumsumexp"):
        convert(model, calib_data=[torch.randn(2, 8)])
    snn = convert(model, calib_data=[torch.randn(2, 8)], allow_float_fallback=True)
    assert [(e.path, e.source) for e in snn.spiking_report.fallback] == [("1", "logcumsumexp")]


def test_any_module_tree_converts_without_rules():
    model = nn.Sequential(nn.Linear(4, 4), nn.GELU(), nn.Linear(4, 4), nn.Sigmoid())
    snn = convert(model, calib_data=[torch.randn(8, 4)])
    assert isinstance(snn[1], RectifiedActivation) and isinstance(snn[3], SpikingActivation)  # GELU, sigmoid
    x = torch.randn(8, 4)
    with torch.no_grad():
        torch.testing.assert_close(snn(x), model(x), rtol=0, atol=2e-2)
    assert rule_for(model) is None


def test_converting_a_converted_model_is_an_error():
    snn = convert(build("vit"), calib_data=[make_batch("vit", 2)])
    with pytest.raises(ValueError, match="already"):
        convert(snn, calib_data=[make_batch("vit", 2)])


@pytest.mark.parametrize("kwargs", [dict(T=0), dict(N=1.5), dict(activation_N=0), dict(mode="bogus"),
                                    dict(calibration=Calibration(method="median")),
                                    dict(calibration=Calibration(headroom=0.5))])
def test_recipe_validates_options(kwargs):
    with pytest.raises(ValueError):
        ModuleConverter(MBETransformerRecipe(**kwargs)).convert(build("bert"))


@pytest.mark.parametrize("family, part", [("bert", "bert"), ("roberta", "roberta"), ("gpt2", "transformer")])
def test_base_models_without_heads(family, part):
    ann = getattr(build(family), part)
    batch = make_batch(family, 4)
    snn = convert(ann, calib_data=[batch])
    assert snn.spiking_report.fallback == [] and type(snn) is type(ann)
    assert run(snn, batch).shape == run(ann, batch).shape


@pytest.mark.parametrize("cls, config", [
    ("LlamaForCausalLM", dict(vocab_size=96, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                              intermediate_size=64)),
    ("Dinov2ForImageClassification", dict(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1,
                                          num_attention_heads=2, num_labels=10)),
])
def test_llm_and_dinov2_heads(cls, config):
    model_cls = getattr(hf, cls)
    ann = model_cls(model_cls.config_class(**config)).eval()
    batch = make_batch("llama" if "Llama" in cls else "dinov2", 2)
    snn = convert(ann, calib_data=[batch])
    assert snn.spiking_report.fallback == []
    assert run(snn, batch).shape == run(ann, batch).shape


def test_neuron_picks_the_kind_of_the_fitted_activations_and_is_checked():
    """``neuron='fs'`` runs the fitted activations on the shipped FS fits (GELU's whole function and
    tanh; one basis), each within its fit's own error of the float function on the inputs it gets;
    ``'mbe'`` is the default; an unknown kind, or ``neuron`` with ECMT, raises naming it."""
    torch.manual_seed(0)
    ann = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 4))
    x = torch.randn(64, 8)
    fs = convert(ann, [x], neuron="fs", rectified_activations=False)
    assert [m.fitted.key for m in (fs[1], fs[3])] == ["gelu-fs-T16", "tanh-fs-T16"]
    with torch.no_grad():
        h1 = ann[0](x)
        h3 = ann[2](ann[1](h1))
        for site, h, fn in ((fs[1], h1, torch.nn.functional.gelu), (fs[3], h3, torch.tanh)):
            assert 0 < float((site(h) - fn(h)).abs().max()) <= site.fitted.errors["max_abs"] * 1.05
    assert convert(ann, [x], rectified_activations=False)[3].fitted.kind == "mbe"
    with pytest.raises(ValueError, match="neuron must be one of \\['fs', 'mbe'\\].*got 'lif'"):
        convert(ann, [x], neuron="lif")
    with pytest.raises(ValueError, match="method='ecmt' does not use neuron"):
        convert(ann, [x], neuron="fs", method="ecmt")

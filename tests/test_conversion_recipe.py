"""Recipe plumbing: SpikingJelly converters, training-free proof, report, unsupported nonlinearities."""
import pytest
import torch
import torch.nn as nn
import transformers as hf
from spikingjelly.activation_based.ann2snn import FXConverter, ModuleConverter
from transformers.activations import ClippedGELUActivation

import spikingjelly_mbe
from spikingjelly_mbe.conversion import (Calibration, MBETransformerFXRecipe, MBETransformerRecipe,
                                         UnsupportedNonlinearityError, convert, registered)
from spikingjelly_mbe.conversion.operators import OPERATOR_TYPES
from spikingjelly_mbe.conversion.zoo import build, main_output, make_batch
from spikingjelly_mbe.ops import SpikingActivation, SpikingLayerNorm, SpikingMatmul, SpikingSoftmax

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
    # the SNN reuses every weight unchanged, in its own copy
    for path in (e.path for e in snn.mbe_report.kept if e.source in ("Linear", "Conv1D")):
        weight = snn.get_submodule(path).weight
        assert torch.equal(weight, before[f"{path}.weight"])
        assert weight.data_ptr() != ann.get_submodule(path).weight.data_ptr()


def test_module_converter_lifecycle_and_report():
    ann = build("bert")
    recipe = MBETransformerRecipe(T=16, N=4, calibration=[make_batch("bert", 4)])
    snn = ModuleConverter(recipe).convert(ann)
    report = snn.mbe_report
    assert report is recipe.report and snn.ann2snn_recipe == "mbe_transformer" and snn.time_steps == 16
    replaced = {e.path: e.target for e in report.replaced}
    assert replaced["bert.encoder.layer.0.intermediate.intermediate_act_fn"] == "SpikingActivation"
    assert replaced["bert.encoder.layer.1.output.LayerNorm"] == "SpikingLayerNorm"
    assert replaced["bert.pooler.activation"] == "SpikingActivation"  # pooler tanh
    assert replaced["bert.encoder.layer.0.attention.self.mbe_attention.softmax"] == "SpikingSoftmax"
    core = snn.get_submodule("bert.encoder.layer.0.attention.self.mbe_attention")
    assert isinstance(core.scores, SpikingMatmul) and isinstance(core.context, SpikingMatmul)
    assert {e.path for e in report.kept} >= {"classifier", "bert.embeddings.word_embeddings"}
    assert report.fallback == []
    assert "replaced by spiking operators" in str(report)
    # no float nonlinearity survives outside the spiking operators
    ops = [p for p, m in snn.named_modules() if isinstance(m, OPERATOR_TYPES)]
    floats = [p for p, m in snn.named_modules() if isinstance(m, (nn.LayerNorm, nn.Softmax, nn.Tanh))
              and not any(p.startswith(op + ".") for op in ops)]
    assert floats == []


def test_roberta_head_tanh_is_spiked():
    snn = convert(build("roberta"), calib_data=[make_batch("roberta", 4)])
    head = snn.classifier
    assert isinstance(head.activation, SpikingActivation)
    assert {e.path: e.target for e in snn.mbe_report.replaced}["classifier"] == "SpikingRobertaClassificationHead"


def test_fx_recipe_matches_module_recipe_on_vit():
    ann = build("vit")
    batch = make_batch("vit", 4)
    fx_snn = FXConverter(MBETransformerFXRecipe(calibration=[batch])).convert(ann)
    mod_snn = ModuleConverter(MBETransformerRecipe(calibration=[batch])).convert(ann)
    assert isinstance(fx_snn, torch.fx.GraphModule)
    kinds = {type(m) for m in fx_snn.modules()}
    assert {SpikingActivation, SpikingLayerNorm, SpikingMatmul, SpikingSoftmax} <= kinds
    torch.testing.assert_close(run(fx_snn, batch), run(mod_snn, batch), rtol=1e-5, atol=1e-5)


def test_fx_recipe_takes_a_one_shot_iterator():
    ann = build("vit")
    batches = (make_batch("vit", 2, seed=s) for s in range(2))
    snn = convert(ann, calib_data=batches, fx=True)
    assert run(snn, make_batch("vit", 2)).shape == (2, 10)


def test_unsupported_activation_named_by_path_and_type():
    ann = build("bert")
    for layer in ann.bert.encoder.layer:
        layer.intermediate.intermediate_act_fn = ClippedGELUActivation(-10, 10)
    with pytest.raises(UnsupportedNonlinearityError) as err:
        convert(ann, calib_data=[make_batch("bert", 2)])
    assert "bert.encoder.layer.0.intermediate.intermediate_act_fn: ClippedGELUActivation" in str(err.value)
    snn = convert(ann, calib_data=[make_batch("bert", 2)], allow_float_fallback=True)
    fallback = {e.path for e in snn.mbe_report.fallback}
    assert fallback == {f"bert.encoder.layer.{i}.intermediate.intermediate_act_fn" for i in range(2)}
    assert isinstance(snn.bert.encoder.layer[0].intermediate.intermediate_act_fn, ClippedGELUActivation)


def test_unsupported_functional_call_in_fx_graph():
    class Gate(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(8, 8)

        def forward(self, x):
            return torch.sigmoid(self.fc(x))

    model = nn.Sequential(nn.Linear(8, 8), Gate())
    with pytest.raises(UnsupportedNonlinearityError, match=r"1: call_function sigmoid"):
        convert(model, calib_data=[torch.randn(2, 8)], fx=True)
    snn = convert(model, calib_data=[torch.randn(2, 8)], fx=True, allow_float_fallback=True)
    assert [e.path for e in snn.mbe_report.fallback] == ["1"]


def test_unregistered_model_class():
    with pytest.raises(TypeError, match="no MBE architecture rule for Sequential"):
        convert(nn.Sequential(nn.Linear(4, 4), nn.GELU()), calib_data=[torch.randn(2, 4)])
    assert {"VisionTransformer", "BertModel", "GPT2LMHeadModel", "LlamaModel", "Dinov2Model"} <= set(registered())


@pytest.mark.parametrize("kwargs", [dict(T=0), dict(N=1.5), dict(activation_N=0), dict(mode="bogus"),
                                    dict(calibration=Calibration(method="median")),
                                    dict(calibration=Calibration(headroom=0.5))])
def test_recipe_validates_options(kwargs):
    with pytest.raises(ValueError):
        ModuleConverter(MBETransformerRecipe(**kwargs)).convert(build("bert"))


def test_module_converter_refuses_fx_recipe():
    with pytest.raises(TypeError):
        ModuleConverter(MBETransformerFXRecipe())


@pytest.mark.parametrize("family, part", [("bert", "bert"), ("roberta", "roberta"), ("gpt2", "transformer")])
def test_base_models_without_heads(family, part):
    ann = getattr(build(family), part)
    batch = make_batch(family, 4)
    snn = convert(ann, calib_data=[batch])
    assert snn.mbe_report.fallback == [] and type(snn) is type(ann)
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
    assert snn.mbe_report.fallback == []
    assert run(snn, batch).shape == run(ann, batch).shape

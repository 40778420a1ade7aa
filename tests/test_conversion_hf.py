"""Hugging Face wiring: AttentionInterface + mask function, GPT-2 causality, padding, GQA, SwiGLU."""
import pytest
import torch
import transformers as hf
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface, create_causal_mask

from spikingjelly_mbe.conversion import convert
from spikingjelly_mbe.conversion.hf_attention import IMPLEMENTATION, spiking_attention
from spikingjelly_mbe.conversion.zoo import VOCAB, agreement, build, main_output, make_batch
from spikingjelly_mbe.ops import RectifiedActivation, SpikingActivation, SpikingProduct

torch.set_num_threads(1)


def logits(model, **kw):
    with torch.no_grad():
        return main_output(model(**kw))


@pytest.fixture(scope="module")
def gpt2():
    ann = build("gpt2")
    return ann, convert(ann, calib_data=[make_batch("gpt2", 4, seq_len=12, seed=s) for s in range(2)])


def test_converted_gpt2_uses_spiking_attention_and_mask(gpt2):
    ann, snn = gpt2
    assert snn.config._attn_implementation == IMPLEMENTATION and ann.config._attn_implementation == "sdpa"
    mask = create_causal_mask(config=snn.config, inputs_embeds=torch.zeros(2, 5, 8), attention_mask=None,
                              past_key_values=None)
    assert mask.dtype == torch.bool
    torch.testing.assert_close(mask[0, 0], torch.ones(5, 5, dtype=torch.bool).tril())


def test_gpt2_future_tokens_never_change_earlier_logits(gpt2):
    _, snn = gpt2
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, VOCAB, (3, 12), generator=g)
    base = logits(snn, input_ids=ids)
    for cut in (1, 5, 11):
        changed = ids.clone()
        changed[:, cut:] = torch.randint(0, VOCAB, (3, 12 - cut), generator=g)
        out = logits(snn, input_ids=changed)
        torch.testing.assert_close(out[:, :cut], base[:, :cut], rtol=0, atol=1e-6)
        assert not torch.allclose(out[:, cut:], base[:, cut:])


def test_without_the_mask_function_gpt2_would_see_the_future(gpt2, monkeypatch):
    _, snn = gpt2
    ids = torch.randint(0, VOCAB, (2, 8), generator=torch.Generator().manual_seed(2))
    changed = ids.clone()
    changed[:, -1] = (changed[:, -1] + 1) % VOCAB
    monkeypatch.delitem(AttentionMaskInterface._global_mapping, IMPLEMENTATION)
    assert not torch.allclose(logits(snn, input_ids=ids)[:, 0], logits(snn, input_ids=changed)[:, 0])
    monkeypatch.undo()
    assert IMPLEMENTATION in ALL_MASK_ATTENTION_FUNCTIONS


def test_bert_padding_is_masked():
    ann = build("bert")
    batch = make_batch("bert", 4, seq_len=10)
    mask = torch.ones(4, 10, dtype=torch.long)
    mask[:, 7:] = 0
    snn = convert(ann, calib_data=[dict(batch, attention_mask=mask)])
    out = logits(snn, input_ids=batch["input_ids"], attention_mask=mask)
    other = batch["input_ids"].clone()
    other[:, 7:] = (other[:, 7:] + 5) % VOCAB
    torch.testing.assert_close(logits(snn, input_ids=other, attention_mask=mask), out, rtol=0, atol=1e-6)
    ref = logits(ann, input_ids=batch["input_ids"], attention_mask=mask)
    assert agreement(ref, out)["cosine"] >= 0.999


def test_llama_grouped_query_attention_and_swiglu():
    ann = build("llama", heads=4)
    assert ann.config.num_key_value_heads == 2
    batch = make_batch("llama", 4, seq_len=10)
    snn = convert(ann, calib_data=[batch])
    mlp = snn.layers[0].mlp
    assert isinstance(mlp.spiking_product0, SpikingProduct)  # act(gate(x)) * up(x), a call in LlamaMLP.forward
    assert isinstance(mlp.act_fn, RectifiedActivation)  # SiLU: rectifier + fitted residual
    # RoPE multiplies q and k by cos/sin tables computed from positions alone: constants, no product
    assert not [p for p, _ in snn.named_modules() if "self_attn.spiking_product" in p]
    assert agreement(logits(ann, **batch), logits(snn, **batch))["cosine"] >= 0.999


def test_dinov2_swiglu_and_layerscale():
    torch.manual_seed(0)
    ann = hf.Dinov2Model(hf.Dinov2Config(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2,
                                         num_attention_heads=2, use_swiglu_ffn=True, layerscale_value=0.5)).eval()
    batch = make_batch("dinov2", 4)
    snn = convert(ann, calib_data=[batch])
    mlp = snn.encoder.layer[0].mlp
    assert isinstance(mlp.spiking_product0, SpikingProduct)
    # HF's N(0, 0.02) initialisation keeps the SiLU inputs small: refitted on their range (test_fidelity.py)
    assert isinstance(mlp.act_fn, SpikingActivation) and mlp.act_fn.fitted.target == "silu"
    # LayerScale multiplies by a parameter: linear, not a site
    assert not [p for p, _ in snn.named_modules() if "layer_scale" in p and "spiking_" in p]
    assert agreement(logits(ann, **batch), logits(snn, **batch))["cosine"] >= 0.999


def test_attention_function_contract(gpt2):
    _, snn = gpt2
    attn = snn.transformer.h[0].attn
    q, k, v = (torch.randn(2, 2, 5, 16) for _ in range(3))
    out, weights = spiking_attention(attn, q, k, v, None, scaling=0.25)
    assert out.shape == (2, 5, 2, 16) and weights.shape == (2, 2, 5, 5)
    with pytest.raises(ValueError, match="inference-only"):
        spiking_attention(attn, q, k, v, None, dropout=0.1)
    with pytest.raises(RuntimeError, match="no spiking attention core"):
        spiking_attention(build("gpt2").transformer.h[0].attn, q, k, v, None)


def test_models_sharing_a_config_are_unaffected():
    config = hf.GPT2Config(vocab_size=VOCAB, n_layer=1, n_embd=16, n_head=2, bos_token_id=0, eos_token_id=0)
    first, second = hf.GPT2LMHeadModel(config).eval(), hf.GPT2LMHeadModel(config).eval()
    assert first.config is second.config
    ids = make_batch("gpt2", 2, seq_len=6)["input_ids"]
    before = logits(second, input_ids=ids)
    snn = convert(first, calib_data=[{"input_ids": ids}])
    assert snn.config is not config and snn.config._attn_implementation == IMPLEMENTATION
    assert config._attn_implementation == "sdpa"
    torch.testing.assert_close(logits(second, input_ids=ids), before, rtol=0, atol=0)

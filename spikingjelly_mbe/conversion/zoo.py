"""Small random-initialised models of many Transformer (and CNN) families, built locally: the test
matrix of conversion by structure, and toys for benchmarks and demos. No weights are downloaded.

Weights are drawn with fan-in scaling (``N(0, 1/fan_in)``, embeddings ``N(0, 1)``) so activations
are O(1) as in a trained network, rather than the vanishing signals of the 0.02-std default init.
One table, :data:`ZOO`, lists every family with its builder, its input kind and whether it is causal.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict

import timm
import torch
import torch.nn as nn
import transformers as hf
from transformers.models.whisper.modeling_whisper import WhisperEncoder
from transformers.pytorch_utils import Conv1D

from .calibration import Batch

VOCAB, IMAGE, PATCH, LABELS, MELS, AUDIO = 96, 32, 8, 10, 16, 800
EXPERT_WEIGHTS = ("gate_up_proj", "down_proj", "up_proj")


@dataclass(frozen=True)
class Family:
    """``make(layers, hidden, heads)`` builds the model; ``inputs`` is one of ``tokens``,
    ``tokens_roberta`` (ids 0-2 reserved), ``seq2seq`` (encoder and decoder token ids), ``image`` (a
    tensor), ``pixel_values``, ``input_features`` (log-mel audio), ``input_values`` (a raw waveform) or
    ``embeddings`` (a float ``[B, S, hidden]`` tensor)."""

    make: Callable[[int, int, int], nn.Module]
    inputs: str
    causal: bool = False
    source: str = "transformers"


def _hf(cls: type, config: type, **kw: Any) -> Callable[[int, int, int], nn.Module]:
    return lambda layers, hidden, heads: cls(config(**{k: (v(layers, hidden, heads) if callable(v) else v)
                                                       for k, v in kw.items()}))


def _lm(cls: type, config: type, **extra: Any) -> Callable[[int, int, int], nn.Module]:
    """A decoder-only LM with Llama-style config names (GQA: half as many key/value heads)."""
    return _hf(cls, config, vocab_size=VOCAB, num_hidden_layers=lambda l, h, n: l, hidden_size=lambda l, h, n: h,
               num_attention_heads=lambda l, h, n: n, intermediate_size=lambda l, h, n: 4 * h, **extra)


def _encoder(cls: type, config: type, **extra: Any) -> Callable[[int, int, int], nn.Module]:
    """A BERT-style encoder with a classification head."""
    return _hf(cls, config, vocab_size=VOCAB, num_hidden_layers=lambda l, h, n: l, hidden_size=lambda l, h, n: h,
               num_attention_heads=lambda l, h, n: n, intermediate_size=lambda l, h, n: 4 * h, num_labels=LABELS,
               **extra)


def _vision(cls: type, config: type, **extra: Any) -> Callable[[int, int, int], nn.Module]:
    return _hf(cls, config, image_size=IMAGE, patch_size=PATCH, num_hidden_layers=lambda l, h, n: l,
               hidden_size=lambda l, h, n: h, num_attention_heads=lambda l, h, n: n,
               intermediate_size=lambda l, h, n: 4 * h, **extra)


def _timm(name: str, **kw: Any) -> Callable[[int, int, int], nn.Module]:
    return lambda layers, hidden, heads: timm.create_model(name, pretrained=False, num_classes=LABELS, **{
        k: (v(layers, hidden, heads) if callable(v) else v) for k, v in kw.items()})


def _vit_timm(**extra: Any) -> Callable[[int, int, int], nn.Module]:
    return _timm("vit_tiny_patch16_224", img_size=IMAGE, patch_size=PATCH, embed_dim=lambda l, h, n: h,
                  depth=lambda l, h, n: l, num_heads=lambda l, h, n: n, **extra)


def _torch_encoder(layers: int, hidden: int, heads: int) -> nn.Module:
    layer = nn.TransformerEncoderLayer(hidden, heads, 4 * hidden, dropout=0.0, activation="gelu", batch_first=True)
    return nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)


def _gelu_mlp(layers: int, hidden: int, heads: int) -> nn.Module:
    return nn.Sequential(nn.Linear(hidden, 4 * hidden), nn.GELU(), nn.Linear(4 * hidden, LABELS))


ZOO: Dict[str, Family] = {
    # the original six (conf/model toys)
    "vit": Family(_vit_timm(), "image", source="timm"),
    "bert": Family(_encoder(hf.BertForSequenceClassification, hf.BertConfig), "tokens"),
    "roberta": Family(_encoder(hf.RobertaForSequenceClassification, hf.RobertaConfig, pad_token_id=1,
                               bos_token_id=0, eos_token_id=2), "tokens_roberta"),
    "gpt2": Family(_hf(hf.GPT2LMHeadModel, hf.GPT2Config, vocab_size=VOCAB, n_layer=lambda l, h, n: l,
                       n_embd=lambda l, h, n: h, n_head=lambda l, h, n: n, bos_token_id=0, eos_token_id=0),
                   "tokens", causal=True),
    "llama": Family(_lm(hf.LlamaModel, hf.LlamaConfig, num_key_value_heads=lambda l, h, n: max(1, n // 2)), "tokens",
                    causal=True),
    "dinov2": Family(_hf(hf.Dinov2Model, hf.Dinov2Config, image_size=IMAGE, patch_size=PATCH,
                         num_hidden_layers=lambda l, h, n: l, hidden_size=lambda l, h, n: h,
                         num_attention_heads=lambda l, h, n: n, intermediate_size=lambda l, h, n: 4 * h),
                     "pixel_values"),
    # Hugging Face causal LMs
    "llama_lm": Family(_lm(hf.LlamaForCausalLM, hf.LlamaConfig, num_key_value_heads=lambda l, h, n: max(1, n // 2)),
                       "tokens", causal=True),
    "qwen2": Family(_lm(hf.Qwen2ForCausalLM, hf.Qwen2Config, num_key_value_heads=lambda l, h, n: max(1, n // 2)),
                    "tokens", causal=True),
    "mistral": Family(_lm(hf.MistralForCausalLM, hf.MistralConfig, num_key_value_heads=lambda l, h, n: max(1, n // 2),
                          sliding_window=8), "tokens", causal=True),
    "gemma": Family(_lm(hf.GemmaForCausalLM, hf.GemmaConfig, num_key_value_heads=1,
                        head_dim=lambda l, h, n: h // n), "tokens", causal=True),
    "gemma2": Family(_lm(hf.Gemma2ForCausalLM, hf.Gemma2Config, num_key_value_heads=1,
                         head_dim=lambda l, h, n: h // n, sliding_window=8), "tokens", causal=True),
    "phi": Family(_lm(hf.PhiForCausalLM, hf.PhiConfig), "tokens", causal=True),
    "phi3": Family(_lm(hf.Phi3ForCausalLM, hf.Phi3Config, pad_token_id=0, bos_token_id=0, eos_token_id=0), "tokens", causal=True),
    "gpt_neox": Family(_lm(hf.GPTNeoXForCausalLM, hf.GPTNeoXConfig), "tokens", causal=True),
    "gptj": Family(_hf(hf.GPTJForCausalLM, hf.GPTJConfig, vocab_size=VOCAB, n_layer=lambda l, h, n: l,
                       n_embd=lambda l, h, n: h, n_head=lambda l, h, n: n, rotary_dim=lambda l, h, n: h // n // 2,
                       n_positions=64, bos_token_id=0, eos_token_id=0), "tokens", causal=True),
    "qwen2_moe": Family(_lm(hf.Qwen2MoeForCausalLM, hf.Qwen2MoeConfig, num_key_value_heads=lambda l, h, n: max(1, n // 2),
                            num_experts=4, num_experts_per_tok=2, moe_intermediate_size=lambda l, h, n: h,
                            shared_expert_intermediate_size=lambda l, h, n: 2 * h, norm_topk_prob=False),
                        "tokens", causal=True),
    "mixtral": Family(_lm(hf.MixtralForCausalLM, hf.MixtralConfig, num_key_value_heads=1, num_local_experts=4,
                          num_experts_per_tok=2), "tokens", causal=True),
    "qwen3_moe": Family(_lm(hf.Qwen3MoeForCausalLM, hf.Qwen3MoeConfig, num_key_value_heads=1,
                            head_dim=lambda l, h, n: h // n, num_experts=4, num_experts_per_tok=2,
                            moe_intermediate_size=lambda l, h, n: h, norm_topk_prob=False), "tokens", causal=True),
    "olmoe": Family(_lm(hf.OlmoeForCausalLM, hf.OlmoeConfig, num_key_value_heads=1, num_experts=4, num_experts_per_tok=2,
                        norm_topk_prob=False), "tokens", causal=True),
    "phimoe": Family(_lm(hf.PhimoeForCausalLM, hf.PhimoeConfig, num_key_value_heads=lambda l, h, n: n,
                         num_local_experts=4, num_experts_per_tok=2),
                     "tokens", causal=True),
    "opt": Family(_hf(hf.OPTForCausalLM, hf.OPTConfig, vocab_size=VOCAB, num_hidden_layers=lambda l, h, n: l,
                      hidden_size=lambda l, h, n: h, word_embed_proj_dim=lambda l, h, n: h,
                      num_attention_heads=lambda l, h, n: n, ffn_dim=lambda l, h, n: 4 * h), "tokens", causal=True),
    # Hugging Face encoders
    "distilbert": Family(_hf(hf.DistilBertForSequenceClassification, hf.DistilBertConfig, vocab_size=VOCAB,
                             n_layers=lambda l, h, n: l, dim=lambda l, h, n: h, n_heads=lambda l, h, n: n,
                             hidden_dim=lambda l, h, n: 4 * h, num_labels=LABELS), "tokens"),
    "deberta_v2": Family(_encoder(hf.DebertaV2ForSequenceClassification, hf.DebertaV2Config), "tokens"),
    "albert": Family(_encoder(hf.AlbertForSequenceClassification, hf.AlbertConfig, embedding_size=16), "tokens"),
    "electra": Family(_encoder(hf.ElectraForSequenceClassification, hf.ElectraConfig, embedding_size=16), "tokens"),
    "xlm_roberta": Family(_encoder(hf.XLMRobertaForSequenceClassification, hf.XLMRobertaConfig, pad_token_id=1,
                                   bos_token_id=0, eos_token_id=2), "tokens_roberta"),
    "clip_text": Family(_hf(hf.CLIPTextModel, hf.CLIPTextConfig, vocab_size=VOCAB, num_hidden_layers=lambda l, h, n: l,
                            hidden_size=lambda l, h, n: h, num_attention_heads=lambda l, h, n: n,
                            intermediate_size=lambda l, h, n: 4 * h, max_position_embeddings=32, bos_token_id=0, eos_token_id=2), "tokens"),
    "t5_encoder": Family(_hf(hf.T5EncoderModel, hf.T5Config, vocab_size=VOCAB, num_layers=lambda l, h, n: l,
                             d_model=lambda l, h, n: h, num_heads=lambda l, h, n: n, d_kv=lambda l, h, n: h // n,
                             d_ff=lambda l, h, n: 4 * h), "tokens"),
    "t5": Family(_hf(hf.T5ForConditionalGeneration, hf.T5Config, vocab_size=VOCAB, num_layers=lambda l, h, n: l,
                     d_model=lambda l, h, n: h, num_heads=lambda l, h, n: n, d_kv=lambda l, h, n: h // n,
                     d_ff=lambda l, h, n: 4 * h, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1),
                 "seq2seq"),
    "bart": Family(_hf(hf.BartForConditionalGeneration, hf.BartConfig, vocab_size=VOCAB,
                       encoder_layers=lambda l, h, n: l, decoder_layers=lambda l, h, n: l, d_model=lambda l, h, n: h,
                       encoder_attention_heads=lambda l, h, n: n, decoder_attention_heads=lambda l, h, n: n,
                       encoder_ffn_dim=lambda l, h, n: 4 * h, decoder_ffn_dim=lambda l, h, n: 4 * h,
                       max_position_embeddings=64, pad_token_id=1, bos_token_id=0, eos_token_id=2,
                       decoder_start_token_id=2, forced_eos_token_id=None), "seq2seq"),
    "whisper_encoder": Family(_hf(WhisperEncoder, hf.WhisperConfig, num_mel_bins=MELS,
                                  encoder_layers=lambda l, h, n: l, d_model=lambda l, h, n: h,
                                  encoder_attention_heads=lambda l, h, n: n, encoder_ffn_dim=lambda l, h, n: 4 * h,
                                  max_source_positions=8), "input_features"),
    # Hugging Face vision
    "vit_hf": Family(_vision(hf.ViTModel, hf.ViTConfig), "pixel_values"),
    "vit_hf_cls": Family(_vision(hf.ViTForImageClassification, hf.ViTConfig, num_labels=LABELS), "pixel_values"),
    "deit_hf": Family(_vision(hf.DeiTModel, hf.DeiTConfig), "pixel_values"),
    "clip_vision": Family(_vision(hf.CLIPVisionModel, hf.CLIPVisionConfig), "pixel_values"),
    "swin_hf": Family(_hf(hf.SwinModel, hf.SwinConfig, image_size=IMAGE, patch_size=4, embed_dim=lambda l, h, n: h // 2,
                          depths=lambda l, h, n: [2, 2], num_heads=lambda l, h, n: [n, n], window_size=4),
                      "pixel_values"),
    # timm
    "vit_timm_qknorm_reg_avg": Family(_vit_timm(qk_norm=True, reg_tokens=2, global_pool="avg", class_token=False),
                                      "image", source="timm"),
    "deit_distilled_timm": Family(_timm("deit_tiny_distilled_patch16_224", img_size=IMAGE, patch_size=PATCH,
                                        embed_dim=lambda l, h, n: h, depth=lambda l, h, n: l,
                                        num_heads=lambda l, h, n: n), "image", source="timm"),
    "eva02_timm": Family(_timm("eva02_tiny_patch14_224", img_size=IMAGE, patch_size=PATCH,
                               embed_dim=lambda l, h, n: h, depth=lambda l, h, n: l, num_heads=lambda l, h, n: n),
                         "image", source="timm"),
    "swin_timm": Family(_timm("swin_tiny_patch4_window7_224", img_size=IMAGE, patch_size=4, window_size=4,
                              embed_dim=lambda l, h, n: h // 2, depths=(2, 2), num_heads=lambda l, h, n: (n, n)),
                        "image", source="timm"),
    "convnext_timm": Family(_timm("convnext_atto", depths=(1, 1, 1, 1), dims=lambda l, h, n: (h // 2, h, h, h)),
                            "image", source="timm"),
    "resnet18_timm": Family(_timm("resnet18"), "image", source="timm"),
    # arithmetic of activations, on-demand fits and per-group norms
    "bloom": Family(_hf(hf.BloomForCausalLM, hf.BloomConfig, vocab_size=VOCAB, n_layer=lambda l, h, n: l,
                        hidden_size=lambda l, h, n: h, n_head=lambda l, h, n: n), "tokens", causal=True),
    "esm": Family(_encoder(hf.EsmForSequenceClassification, hf.EsmConfig, pad_token_id=1, mask_token_id=2,
                           position_embedding_type="rotary"), "tokens_roberta"),
    "levit": Family(_hf(hf.LevitForImageClassification, hf.LevitConfig, image_size=IMAGE, num_labels=LABELS,
                        hidden_sizes=lambda l, h, n: [h, h + h // 2, 2 * h], num_attention_heads=lambda l, h, n: [n] * 3,
                        depths=lambda l, h, n: [1] * 3, key_dim=lambda l, h, n: [h // (2 * n)] * 3), "pixel_values"),
    "convnextv2": Family(_hf(hf.ConvNextV2ForImageClassification, hf.ConvNextV2Config, image_size=IMAGE,
                             num_labels=LABELS, hidden_sizes=lambda l, h, n: [h // 2, h, h, h], depths=[1, 1, 1, 1]),
                         "pixel_values"),
    "wav2vec2": Family(_hf(hf.Wav2Vec2Model, hf.Wav2Vec2Config, num_hidden_layers=lambda l, h, n: l,
                           hidden_size=lambda l, h, n: h, num_attention_heads=lambda l, h, n: n,
                           intermediate_size=lambda l, h, n: 2 * h, conv_dim=(16, 16), conv_stride=(5, 2),
                           conv_kernel=(10, 3), num_conv_pos_embeddings=8, num_conv_pos_embedding_groups=2,
                           feat_extract_norm="group"), "input_values"),
    # torch
    "torch_encoder": Family(_torch_encoder, "embeddings", source="torch"),
    "gelu_mlp": Family(_gelu_mlp, "embeddings", source="torch"),
}
FAMILIES = ("vit", "bert", "roberta", "gpt2", "llama", "dinov2")  # the conf/model toys


def build(family: str, layers: int = 2, hidden: int = 32, heads: int = 2, seed: int = 0,
          own_init: bool = False) -> nn.Module:
    """A fresh eval-mode model of ``family`` (each with its own config object); ``own_init`` keeps the
    library's own initialisation (Hugging Face's: weights ``N(0, 0.02)``) instead of fan-in scaling."""
    if family not in ZOO:
        raise ValueError(f"unknown family {family!r}; known: {sorted(ZOO)}")
    torch.manual_seed(seed)
    model = ZOO[family].make(layers, hidden, heads)
    if own_init:
        return model.eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Linear, Conv1D, nn.Conv1d, nn.Conv2d)):
                fan_in = m.weight.shape[0] if isinstance(m, Conv1D) else m.weight[0].numel()
                m.weight.normal_(0.0, fan_in ** -0.5)
                if m.bias is not None:
                    m.bias.normal_(0.0, 0.1)
            elif isinstance(m, nn.Embedding):
                m.weight.normal_(0.0, 1.0)
            else:  # a router's weight [experts, hidden]; stacked expert weights [experts, out, in]
                for name, p in m.named_parameters(recurse=False):
                    if (name == "weight" and p.dim() == 2) or (name in EXPERT_WEIGHTS and p.dim() == 3):
                        p.normal_(0.0, p.shape[-1] ** -0.5)
    return model.eval()


def make_batch(family: str, size: int, seq_len: int = 16, seed: int = 0, hidden: int = 32) -> Batch:
    """Random inputs of the family's kind: token ids (``{'input_ids': ...}``, and ``decoder_input_ids``
    of half the length for an encoder-decoder), images (a tensor for timm, ``pixel_values`` for
    Hugging Face), log-mel features, waveforms of ``AUDIO`` samples, or embeddings ``[size, seq_len, hidden]``."""
    g = torch.Generator().manual_seed(seed)
    kind = ZOO[family].inputs if family in ZOO else "tokens"
    if kind in ("image", "pixel_values"):
        images = torch.randn(size, 3, IMAGE, IMAGE, generator=g)
        return images if kind == "image" else {"pixel_values": images}
    if kind == "input_features":
        return {"input_features": torch.randn(size, MELS, 16, generator=g)}
    if kind == "input_values":
        return {"input_values": torch.randn(size, AUDIO, generator=g)}
    if kind == "embeddings":
        return torch.randn(size, seq_len, hidden, generator=g)
    low = 3 if kind in ("tokens_roberta", "seq2seq") else 0  # keep pad/bos/eos ids out of the random tokens
    ids = {"input_ids": torch.randint(low, VOCAB, (size, seq_len), generator=g)}
    if kind == "seq2seq":
        ids["decoder_input_ids"] = torch.randint(low, VOCAB, (size, seq_len // 2), generator=g)
    return ids


def main_output(result: Any) -> torch.Tensor:
    """Logits when the model has a head, else the last hidden state (or the first tensor returned)."""
    if isinstance(result, torch.Tensor):
        return result
    logits = getattr(result, "logits", None)
    if logits is not None:
        return logits
    hidden = getattr(result, "last_hidden_state", None)
    return hidden if hidden is not None else result[0]


def agreement(ann: torch.Tensor, snn: torch.Tensor) -> dict:
    """Worst per-sample cosine similarity and the fraction of positions with the same argmax."""
    cos = torch.nn.functional.cosine_similarity(ann.flatten(1).double(), snn.flatten(1).double(), dim=1)
    same = (ann.argmax(-1) == snn.argmax(-1)).double().mean()
    return {"cosine": cos.min().item(), "argmax": same.item()}

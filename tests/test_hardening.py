"""Hostile inputs, round 3 (issue 28): half-precision models, hooks, threads, careless arguments and
silent zeros. Each case ends in numbers checked against the ANN (or its float32 twin), or in an
exact error or warning text."""
import math
import threading
import warnings

import numpy as np
import pytest
import torch
import torch.nn as nn

from spikingjelly_mbe import convert
from spikingjelly_mbe.cache import CacheDirError
from spikingjelly_mbe.conversion import zoo
from spikingjelly_mbe.energy import EnergyMeter
from spikingjelly_mbe.fitting import library

T = 16


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return zoo.agreement(a.float(), b.float())["cosine"]


def in_dtype(batch, dtype: torch.dtype):
    if isinstance(batch, torch.Tensor):
        return batch.to(dtype)
    return {k: v.to(dtype) if v.is_floating_point() else v for k, v in batch.items()}


def run(model: nn.Module, batch) -> torch.Tensor:
    with torch.no_grad():
        return zoo.main_output(model(batch) if isinstance(batch, torch.Tensor) else model(**batch))


# ---------------------------------------------------------------- half precision
@pytest.mark.parametrize("family, dtype", [("llama_lm", torch.bfloat16), ("qwen2", torch.bfloat16),
                                           ("qwen2", torch.float16), ("gemma", torch.float16),
                                           ("whisper_encoder", torch.float16)])
def test_half_precision_models_convert_and_agree_with_the_ann_in_their_own_dtype(family, dtype):
    """The norms are recognised in the model's dtype (the RMSNorm refused as ``rsqrt`` in bf16 before)
    and the spiking model runs in it. Tolerance: the SNN may lose what converting costs in float32 plus
    what the dtype's own rounding costs the ANN (``1 - cos`` of each), three times over."""
    batch = zoo.make_batch(family, 2, 8)
    ann32, ann = zoo.build(family), zoo.build(family).to(dtype)
    snn32, snn = convert(ann32, T=T, calib_data=[batch]), convert(ann, T=T, calib_data=[in_dtype(batch, dtype)])
    assert snn.mbe_report.fully_spiking
    out, ref = run(snn, in_dtype(batch, dtype)), run(ann, in_dtype(batch, dtype))
    assert out.dtype == dtype
    conversion_loss = 1 - cosine(run(snn32, batch), run(ann32, batch))
    rounding_loss = 1 - cosine(ref, run(ann32, batch))
    assert 1 - cosine(out, ref) <= 3 * (conversion_loss + rounding_loss)
    assert cosine(out, ref) > 0.999


# ---------------------------------------------------------------- hooks
HOOKS = {
    "gelu_output_times_zero": (1, lambda m: m.register_forward_hook(lambda mod, args, out: out * 0)),
    "linear_output_plus_one": (0, lambda m: m.register_forward_hook(lambda mod, args, out: out + 1)),
    "linear_input_doubled_by_a_pre_hook": (2, lambda m: m.register_forward_pre_hook(lambda mod, args: (args[0] * 2,))),
    "gelu_input_shifted_by_a_pre_hook": (1, lambda m: m.register_forward_pre_hook(lambda mod, args: (args[0] - 1,))),
}


@pytest.mark.parametrize("name", sorted(HOOKS))
def test_hooks_on_replaced_or_wrapped_modules_run_on_the_spiking_module(name):
    index, register = HOOKS[name]
    x, y = zoo.make_batch("gelu_mlp", 4, 8), zoo.make_batch("gelu_mlp", 4, 8, seed=1)
    plain, hooked = zoo.build("gelu_mlp"), zoo.build("gelu_mlp")
    register(hooked[index])
    snn = convert(hooked, T=T, calib_data=[x])
    out, ref, unhooked = run(snn, y), run(hooked, y), run(plain, y)
    assert (ref - unhooked).abs().max() > 0.1  # the hook changes the ANN's output
    assert cosine(out, ref) > 0.9999 and (out - ref).abs().max() < 0.05
    assert len(hooked[index]._forward_hooks) + len(hooked[index]._forward_pre_hooks) == 1  # the ANN keeps its hook


def test_a_hook_on_a_fingerprinted_norm_of_a_llama_fires_once_per_forward_with_the_spiking_output():
    ann = zoo.build("llama_lm")
    seen = []
    ann.model.norm.register_forward_hook(lambda mod, args, out: seen.append((type(mod).__name__, out.detach().clone())))
    batch = zoo.make_batch("llama_lm", 2, 8)
    snn = convert(ann, T=T, calib_data=[batch])
    seen.clear()
    run(snn, batch)
    assert [kind for kind, _ in seen] == ["SpikingRMSNorm"]
    seen_snn = seen.pop()[1]
    run(ann, batch)
    assert cosine(seen_snn, seen.pop()[1]) > 0.9999


# ---------------------------------------------------------------- threads
def test_eight_threads_on_one_converted_llama_give_the_sequential_outputs_bit_for_bit():
    ann = zoo.build("llama_lm")
    snn = convert(ann, T=T, calib_data=[zoo.make_batch("llama_lm", 2, 8)])
    batches = [zoo.make_batch("llama_lm", 2, 8, seed=s) for s in range(4)]
    sequential = [run(snn, b) for b in batches]
    results, errors = [], []

    def work(i: int) -> None:
        try:
            for k in range(3):
                j = (i + k) % len(batches)
                results.append((j, run(snn, batches[j])))
        except Exception as error:  # noqa: BLE001 - every failure is reported below
            errors.append(repr(error))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(results) == 24
    assert all(torch.equal(out, sequential[j]) for j, out in results)


# ---------------------------------------------------------------- careless arguments
def test_convert_of_a_torch_compile_wrapper_converts_its_original_module():
    ann, x = zoo.build("gelu_mlp"), zoo.make_batch("gelu_mlp", 4, 8)
    snn = convert(torch.compile(ann, backend="eager"), T=T, calib_data=[x])
    direct = convert(ann, T=T, calib_data=[x])
    assert torch.equal(run(snn, x), run(direct, x)) and cosine(run(snn, x), run(ann, x)) > 0.9999


@pytest.mark.parametrize("model", [None, "bert", [nn.Linear(2, 2)]])
def test_convert_of_something_that_is_not_a_module_is_a_type_error_naming_model(model):
    with pytest.raises(TypeError, match=r"^model must be a torch.nn.Module \(the ANN to convert\), got "):
        convert(model, T=T, calib_data=[torch.zeros(2, 2)])


@pytest.mark.parametrize("steps", [np.int64(8), np.int32(8), torch.tensor(8), torch.tensor(8, dtype=torch.int16)])
def test_integer_scalars_of_numpy_and_torch_are_accepted_as_T(steps):
    ann, x = zoo.build("gelu_mlp"), zoo.make_batch("gelu_mlp", 4, 8)
    snn = convert(ann, T=steps, calib_data=[x])
    assert snn.time_steps == 8 and type(snn.time_steps) is int
    assert torch.equal(run(snn, x), run(convert(ann, T=8, calib_data=[x]), x))


@pytest.mark.parametrize("steps", [np.float64(8.0), torch.tensor(8.0), np.bool_(True)])
def test_non_integer_scalars_are_still_refused_as_T(steps):
    with pytest.raises(ValueError, match="T must be a positive integer"):
        convert(zoo.build("gelu_mlp"), T=steps, calib_data=[zoo.make_batch("gelu_mlp", 4, 8)])


@pytest.mark.parametrize("family", ["bert", "gpt2"])
def test_calibration_batches_carrying_labels_run_without_them_and_the_loss_still_works(family, caplog):
    ann, batch = zoo.build(family), zoo.make_batch(family, 2, 12)
    labels = torch.tensor([0, 1]) if family == "bert" else batch["input_ids"]
    with caplog.at_level("INFO", logger="spikingjelly_mbe.conversion"):
        snn = convert(ann, T=T, calib_data=[dict(batch, labels=labels)])
    assert "ran 1 of 1 batch(es) without their ['labels'] (the loss is not converted" in caplog.text
    assert snn.mbe_report.fully_spiking
    assert cosine(run(snn, batch), run(ann, batch)) > 0.9999
    with torch.no_grad():
        assert float(snn(**batch, labels=labels).loss) == pytest.approx(float(ann(**batch, labels=labels).loss), rel=1e-2)


def test_calibration_on_one_token_warns_how_many_positions_to_give():
    with pytest.warns(UserWarning, match=r"calibration ran on 1 position\(s\) \(tokens, or rows of the input\) in 1 "
                                         r"batch\(es\).*give at least 8 \(e.g. a few sequences of 16 tokens"):
        convert(zoo.build("bert"), T=T, calib_data=[{"input_ids": torch.tensor([[5]])}])
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        convert(zoo.build("bert"), T=T, calib_data=[zoo.make_batch("bert", 1, 8)])  # 8 tokens: no warning


def test_a_fit_cache_entry_that_cannot_be_written_is_refused_before_fitting(tmp_path, monkeypatch):
    monkeypatch.setenv("SPIKINGJELLY_MBE_CACHE", str(tmp_path))
    (tmp_path / "fits" / "tanh-mbe-N1-T9.json").mkdir(parents=True)
    library._load.cache_clear()
    monkeypatch.setattr(library, "_fitter", [lambda *a, **k: pytest.fail("fitted although the result cannot be saved")])
    with pytest.raises(CacheDirError, match=r"cache entry .*tanh-mbe-N1-T9.json exists and is not a file \(a folder\?\): "
                                            r"remove it, or set \$SPIKINGJELLY_MBE_CACHE"):
        library.load_fitted("tanh", N=1, T=9)
    library._load.cache_clear()


# ---------------------------------------------------------------- silent zeros
def test_an_energy_meter_that_metered_nothing_warns_and_reports_nan_not_zero():
    snn = convert(zoo.build("gelu_mlp"), T=T, calib_data=[zoo.make_batch("gelu_mlp", 4, 8)])
    with EnergyMeter(snn, T) as meter:
        pass
    with pytest.warns(UserWarning, match="EnergyMeter metered nothing: no forward of the model ran inside"):
        assert math.isnan(meter.ratio())
    with pytest.warns(UserWarning, match="EnergyMeter metered nothing"):
        assert math.isnan(meter.rows("operator")[-1]["energy_strict"])
    with EnergyMeter(snn, T) as meter:
        run(snn, zoo.make_batch("gelu_mlp", 4, 8))
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        assert 0 < meter.ratio() < 1


def test_tracing_a_converted_model_warns_that_the_trace_is_wrong():
    x = zoo.make_batch("gelu_mlp", 4, 8)
    snn = convert(zoo.build("gelu_mlp"), T=T, calib_data=[x])
    with pytest.warns(UserWarning, match=r"torch.jit.trace does not record a spiking operator faithfully: .*overflow "
                                         r"shift.*Run the model eagerly, or with torch.compile"), torch.no_grad():
        torch.jit.trace(snn, x, check_trace=False)


# ---------------------------------------------------------------- robust calibration
def with_outlier(batch: torch.Tensor, where: tuple, value: float) -> torch.Tensor:
    bad = batch.clone()
    bad[where] = value
    return bad


OUTLIERS = {  # family, where in the first calibration batch, value
    "one_element_of_1e5_in_an_mlp": ("gelu_mlp", (0, 0, 0), 1e5),
    "one_element_of_1e6_in_an_mlp": ("gelu_mlp", (2, 3, 5), 1e6),
    "one_token_row_of_1e6_in_an_mlp": ("gelu_mlp", (0, 0), 1e6),
    "one_token_row_of_1e6_in_an_encoder": ("torch_encoder", (1, 4), 1e6),
    "one_element_of_1e4_in_an_encoder": ("torch_encoder", (0, 7, 3), -1e4),
}


@pytest.mark.parametrize("name", sorted(OUTLIERS))
def test_one_outlier_in_the_calibration_data_is_left_out_of_the_ranges_with_a_warning(name):
    family, where, value = OUTLIERS[name]
    ann = zoo.build(family)
    clean = [zoo.make_batch(family, 4, 8, seed=s) for s in (0, 1)]
    y = zoo.make_batch(family, 4, 8, seed=9)
    clean_cosine = cosine(run(convert(ann, T=T, calib_data=clean), y), run(ann, y))
    with pytest.warns(UserWarning, match=rf"calibration: \d+ sample\(s\) stand far \(over 64x\) beyond the median sample "
                                         rf"of an operand;.*: batch 0 sample {where[0]} peaks at "):
        snn = convert(ann, T=T, calib_data=[with_outlier(clean[0], where, value), clean[1]])
    assert cosine(run(snn, y), run(ann, y)) >= clean_cosine - 1e-4 > 0.9998


def test_a_vit_calibrated_on_eight_images_one_of_them_unnormalised_keeps_the_clean_accuracy():
    ann = zoo.build("vit")
    good, other = zoo.make_batch("vit", 4, seed=0), zoo.make_batch("vit", 4, seed=1)
    y = zoo.make_batch("vit", 8, seed=2)
    clean = zoo.agreement(run(ann, y), run(convert(ann, T=T, calib_data=[good, other]), y))
    bad = other.clone()
    bad[0] *= 255
    with pytest.warns(UserWarning, match=r"patch_embed.proj input: batch 1 sample 0 peaks at"):
        snn = convert(ann, T=T, calib_data=[good, bad])
    result = zoo.agreement(run(ann, y), run(snn, y))
    assert result["cosine"] >= clean["cosine"] - 1e-4 and result["argmax"] >= clean["argmax"]


@pytest.mark.parametrize("family", ["bert", "llama_lm", "vit", "torch_encoder"])
def test_clean_calibration_finds_no_isolated_sample_so_it_makes_one_pass(family, monkeypatch):
    from spikingjelly_mbe.conversion import calibration
    passes = []
    original = calibration.calibration_pass
    monkeypatch.setattr(calibration, "calibration_pass", lambda *a: passes.append(1) or original(*a))
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        convert(zoo.build(family), T=T, calib_data=[zoo.make_batch(family, 4, 8, seed=s) for s in (0, 1)])
    assert passes == [1]


def test_range_observer_finds_only_samples_far_beyond_the_median_sample():
    from spikingjelly_mbe.ops.observer import CALIBRATION_BATCH, RangeObserver

    def observed(*batches: torch.Tensor) -> RangeObserver:
        observer = RangeObserver()
        for index, x in enumerate(batches):
            token = CALIBRATION_BATCH.set(index)
            observer.observe(observer.admit(x))
            CALIBRATION_BATCH.reset(token)
        return observer

    spread = torch.tensor([[1.0, -2.0], [60.0, 3.0], [0.5, 0.0]])  # peaks 2, 60, 0.5: within 64x of the median 2
    observer = observed(spread)
    assert observer.isolated() == [] and observer.admit(spread) is None and observer.max == 60.0
    observer = observed(spread, torch.tensor([[0.0, 129.0]]))  # median sample 2: 129 stands beyond 128
    (extreme,) = observer.isolated()
    assert (extreme.batch, extreme.sample, extreme.peak, extreme.typical) == (1, 0, 129.0, 2.0)
    assert observer.max == 0.0 and torch.equal(observer.admit(spread), spread) and observer.admit(torch.ones(1, 2)) is None
    two = observed(torch.tensor([[1.0], [1e6]]))  # two samples: the larger stands beyond the smaller
    assert [e.sample for e in two.isolated()] == [1]
    silent = observed(torch.zeros(3, 2), torch.ones(1, 2))  # the median sample is zero: no scale to stand beyond
    assert silent.isolated() == []

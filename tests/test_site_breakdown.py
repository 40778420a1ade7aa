"""The per-site error breakdown of benchmarks/operator_T.py, against hand-computed medians."""
import math

from experiments.site_breakdown import by_layer, by_type, layer_of
from spikingjelly_mbe.conversion.fidelity import SiteError


def site(path: str, operator: str, error: float) -> SiteError:
    return SiteError(path, operator, error, 10)


SITES = [site("model.layers.0.mlp.down_proj", "SpikingWeightInput", 0.4),
         site("model.layers.1.mlp.down_proj", "SpikingWeightInput", 0.1),
         site("model.layers.1.mlp.up_proj", "SpikingWeightInput", 0.3),
         site("model.layers.1.self_attn.spiking_softmax0", "SpikingSoftmax", 0.01),
         site("lm_head", "SpikingWeightInput", 0.2)]


def test_layer_is_the_first_integer_component():
    assert layer_of("model.layers.12.mlp") == 12 and layer_of("encoder.layer.3") == 3
    assert layer_of("lm_head") is None and layer_of("h.0") == 0 and layer_of("x1.y") is None


def test_types_and_layers_take_the_median_of_their_sites():
    rows = by_type(SITES)
    assert [r["operator"] for r in rows] == ["SpikingWeightInput", "SpikingSoftmax"]
    assert rows[0]["sites"] == 4 and math.isclose(rows[0]["median_error"], 0.25)
    assert rows[0]["worst_error"] == 0.4 and rows[0]["worst_site"] == "model.layers.0.mlp.down_proj"
    kinds, layers, matrix = by_layer(SITES)
    assert kinds == ["SpikingWeightInput", "SpikingSoftmax"] and layers == [0, 1]
    assert matrix[0] == [0.4, 0.2] and math.isnan(matrix[1][0]) and matrix[1][1] == 0.01

"""tools/scale_map_gain.py: the binary convolutions against their float selves, with and without the scale map."""

import pytest
import torch
from torch import nn

import binarydm
from binarydm.algorithms import preset
from binarydm.algorithms.bidm import binary_and_float_outputs

import scale_map_gain


@pytest.mark.parametrize("init", ["box", "fit", "unit"])
def test_each_scale_init_starts_where_it_says(init):
    rows, network = scale_map_gain.measure(["config=tiny", f"quant_options.scale_init={init}"])
    assert rows and all(r["layer"].endswith(("conv1", "conv2", "conv")) for r in rows)
    assert list(network) == list(scale_map_gain.SHORTCUT_STARTS) and len(set(network.values())) == len(network)
    for r in rows:  # the measured forward is the calibration batch's: each init holds exactly there
        assert r["norm_plain"] == pytest.approx(r["gain_plain"] / r["cos_plain"], rel=1e-4)
        if init == "fit":
            assert r["gain_map"] == pytest.approx(1.0, abs=1e-4)
        elif init == "unit":
            assert r["mean_K"] == pytest.approx(1.0, abs=1e-4)
        else:  # the box filter: XNOR-Net's mean |x|, well below 1 after a GroupNorm and SiLU
            assert r["mean_K"] < 0.9


def test_without_shortcuts_there_are_no_shortcut_figures():
    rows, network = scale_map_gain.measure(["config=tiny", "quant_options.shortcut=false"])
    assert rows and network == {} and not any("s_map" in r for r in rows)


def test_a_run_without_scale_maps_is_one_line(capsys):
    with pytest.raises(SystemExit) as exc:
        scale_map_gain.main(["config=tiny", "quant=xnor"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "no binarized convolution has a scale map" in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("cin,cout,stride", [(4, 4, 1), (4, 6, 2)])
def test_best_shortcut_scale_minimises_the_layers_own_output_error(cin, cout, stride):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1))
    x = torch.randn(2, cin, 8, 8)
    binarydm.binarize_(model, preset("bidm"))
    binarydm.calibrate_(model, x)
    layer, q = model[0], model[0].weight_quantizer
    with torch.no_grad():  # as measure() calls it
        row = scale_map_gain._row("conv", layer, x)
        binary, full = binary_and_float_outputs(layer, x)

    def error(s):  # through the layer's own output path: K(x) y + s shortcut(x)
        with torch.no_grad():
            q.shortcut.scale.fill_(s)
            return float((full - q.transform_output(binary, x)).pow(2).sum())

    best = row["s_map"]
    assert error(best) < min(error(best - 0.05), error(best + 0.05))
    assert error(best) == pytest.approx((1 - row["removed_map"]) * error(0.0), rel=1e-4)

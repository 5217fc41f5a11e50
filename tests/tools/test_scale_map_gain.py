"""tools/scale_map_gain.py: the binary convolutions against their float selves, with and without the scale map."""

import pytest

import scale_map_gain


@pytest.mark.parametrize("init", ["box", "fit", "unit"])
def test_each_scale_init_starts_where_it_says(init):
    rows = scale_map_gain.measure(["config=tiny", f"quant_options.scale_init={init}"])
    assert rows and all(r["layer"].endswith(("conv1", "conv2", "conv")) for r in rows)
    for r in rows:  # the measured forward is the calibration batch's: each init holds exactly there
        assert r["norm_plain"] == pytest.approx(r["gain_plain"] / r["cos_plain"], rel=1e-4)
        if init == "fit":
            assert r["gain_map"] == pytest.approx(1.0, abs=1e-4)
        elif init == "unit":
            assert r["mean_K"] == pytest.approx(1.0, abs=1e-4)
        else:  # the box filter: XNOR-Net's mean |x|, well below 1 after a GroupNorm and SiLU
            assert r["mean_K"] < 0.9


def test_a_run_without_scale_maps_is_one_line(capsys):
    with pytest.raises(SystemExit) as exc:
        scale_map_gain.main(["config=tiny", "quant=xnor"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "no binarized convolution has a scale map" in err and len(err.splitlines()) == 1

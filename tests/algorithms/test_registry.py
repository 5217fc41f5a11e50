"""binarydm.algorithms: names, presets, options, errors, and every algorithm on three model families."""

import json

import pytest
import torch

import binarydm
from binarydm import algorithms
from binarydm.algorithms.bipft import calibrate_ as bipft_calibrate
from binarydm.quant.convert import weight_quantizers

from .helpers import TinyResNet, TinyTransformer, resnet_input, transformer_input

EXPECTED = {"bnn", "xnor", "dorefa", "bireal", "xnorpp", "reactnet", "recu", "fda", "biper", "fdb", "bipft", "lsq",
            "baseline", "lmb", "ebb", "db-sigmoid", "bidm"}


def test_available_lists_every_algorithm():
    assert set(algorithms.available()) == EXPECTED


def test_unknown_name_lists_the_valid_ones():
    with pytest.raises(ValueError, match="valid names: .*'xnor'"):
        algorithms.preset("xnor-net")
    with pytest.raises(ValueError, match="valid names"):
        binarydm.binarize_(TinyResNet(), binarydm.QuantConfig(weight="nope"))


def test_preset_overrides():
    c = algorithms.preset("xnor", act="lsq", a_bits=4)
    assert (c.weight, c.act, c.a_bits) == ("xnor", "lsq", 4)
    assert algorithms.preset("lsq", w_bits=2).w_bits == 2


def test_one_bit_activation_names_refuse_multi_bit_configs():
    with pytest.raises(ValueError, match="set a_bits=1"):
        binarydm.binarize_(TinyResNet(), binarydm.QuantConfig(weight="xnor", act="reactnet", a_bits=4))


def _calibrate(name):
    if name == "bipft":
        return bipft_calibrate
    return binarydm.calibrate_


def _run(model, name, *inputs):
    binarydm.binarize_(model, algorithms.preset(name))
    _calibrate(name)(model, *inputs)
    assert weight_quantizers(model), name
    return model(*inputs)


NAMES = sorted(EXPECTED)


@pytest.mark.parametrize("name", NAMES)
def test_every_algorithm_on_a_resnet(name):
    y = _run(TinyResNet(), name, resnet_input())
    assert y.shape == (2, 5) and torch.isfinite(y).all()


@pytest.mark.parametrize("name", NAMES)
def test_every_algorithm_on_a_transformer(name):
    y = _run(TinyTransformer(), name, transformer_input())
    assert y.shape == (2, 5, 5) and torch.isfinite(y).all()


@pytest.mark.parametrize("name", NAMES)
def test_every_algorithm_on_a_diffusers_unet(name, tiny_unet, unet_batch):
    y = _run(tiny_unet, name, *unet_batch).sample
    assert y.shape == unet_batch[0].shape and torch.isfinite(y).all()


# ---- one name table ---------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_every_name_binarizes_a_unet_by_name(name, tiny_unet, unet_batch):
    """binarize_(unet, name) reads the same table as preset(name) and QuantConfig.preset(name)."""
    assert binarydm.QuantConfig.preset(name) == algorithms.preset(name)
    binarydm.binarize_(tiny_unet, name)
    binarydm.calibrate_(tiny_unet, *unet_batch)
    assert weight_quantizers(tiny_unet)
    y = tiny_unet(*unet_batch).sample
    assert y.shape == unet_batch[0].shape and torch.isfinite(y).all()


# ---- algorithm parameters -------------------------------------------------------------------------
def test_parameters_go_into_the_quantizer_names_with_the_originals_defaults():
    assert algorithms.preset("biper", omega=20) == algorithms.preset("biper")  # the default is not written
    c = algorithms.preset("biper", omega=10)
    assert (c.weight, c.act) == ("biper(omega=10.0)", "biper")  # omega is a weight option only
    c = algorithms.preset("fda", terms=5)
    assert (c.weight, c.act) == ("fda(terms=5)", "fda(terms=5)")
    c = algorithms.preset("xnor", act="lsq", a_bits=4, scaled_grad=True)  # fields and options together
    assert (c.weight, c.act, c.a_bits) == ("xnor(scaled_grad=True)", "lsq", 4)
    assert hash(c) == hash(binarydm.QuantConfig.from_dict(c.to_dict()))


def test_bad_parameters_name_the_valid_ones():
    with pytest.raises(ValueError, match=r"valid options: \['alpha_init', 'omega', 'stage1_fraction'\]"):
        algorithms.preset("biper", omegaa=10)
    with pytest.raises(ValueError, match="omega must be float"):
        algorithms.preset("biper", omega="10")
    with pytest.raises(ValueError, match="omega > 0"):
        algorithms.preset("biper", omega=-1.0)
    with pytest.raises(ValueError, match="valid options: \\[\\]"):
        algorithms.preset("bnn", tau=1)
    with pytest.raises(ValueError, match="takes no options"):
        binarydm.binarize_(TinyResNet(), binarydm.QuantConfig(weight="bnn(k=1)", act="bnn", a_bits=1))
    with pytest.raises(ValueError, match="key=value"):
        binarydm.binarize_(TinyResNet(), binarydm.QuantConfig(weight="recu(0.9)", act="recu", a_bits=1))


def test_a_saved_config_rebuilds_the_model_with_its_parameters():
    config = algorithms.preset("recu", tau_start=0.9, tau_end=0.95)
    model = binarydm.binarize_(TinyResNet(), config)
    x = resnet_input()
    binarydm.calibrate_(model, x)
    saved = json.loads(json.dumps(config.to_dict()))  # what quant_config.json and the packed file hold
    fresh = binarydm.binarize_(TinyResNet(), binarydm.QuantConfig.from_dict(saved))
    fresh.load_state_dict(model.state_dict())
    recus = [m.weight_quantizer for m in fresh.modules() if hasattr(m, "weight_quantizer")]
    assert {(q.tau_start, q.tau_end) for q in recus} == {(0.9, 0.95)}
    assert {round(q.tau.item(), 6) for q in recus} == {0.9}
    with torch.no_grad():
        torch.testing.assert_close(fresh.eval()(x), model.eval()(x), rtol=0, atol=0)

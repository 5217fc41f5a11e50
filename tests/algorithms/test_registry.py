"""binarydm.algorithms: names, presets, errors, and every algorithm on three model families."""

import pytest
import torch

import binarydm
from binarydm import algorithms
from binarydm.algorithms import xnorpp
from binarydm.algorithms.bipft import calibrate_ as bipft_calibrate
from binarydm.quant.convert import weight_quantizers

from .helpers import TinyResNet, TinyTransformer, resnet_input, transformer_input

EXPECTED = {"bnn", "xnor", "dorefa", "bireal", "xnorpp", "reactnet", "recu", "fda", "biper", "fdb", "bipft", "lsq",
            "baseline", "lmb", "ebb", "db-sigmoid"}


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
    if name == "xnorpp":
        return xnorpp.prepare_
    if name == "bipft":
        return bipft_calibrate
    return binarydm.calibrate_


def _run(model, name, *inputs):
    binarydm.binarize_(model, algorithms.preset(name))
    _calibrate(name)(model, *inputs)
    assert weight_quantizers(model), name
    return model(*inputs)


# XNOR++'s Gamma needs the layers' output-scale slot to reach the layer output; everything else runs now.
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

import pytest
import torch

from binarydm.algorithms import preset
from binarydm.algorithms.reactnet import RSign

from .helpers import (
    TinyResNet, TinyTransformer, check_conv_arguments, check_round_trip, leaf, resnet_input, transformer_input,
    upstream, vjp,
)

CONFIG = preset("reactnet")


def _rsign(channels=4, seed=0):
    q = RSign().initialize_(torch.zeros(1, channels, 1, 1))
    with torch.no_grad():
        q.beta.copy_(torch.randn(channels, generator=torch.Generator().manual_seed(seed)) * 0.3)
    return q


def test_forward_is_sign_of_shifted_input():
    q = _rsign()
    x = leaf(2, 4, 5, 5)
    y = q(x)
    assert set(y.unique().tolist()) <= {-1.0, 1.0}
    u = x.detach() + q.beta.detach().view(1, -1, 1, 1)
    assert torch.equal(y > 0, u >= 0)


def test_shift_is_per_channel_on_the_last_axis_for_tokens():
    q = RSign().initialize_(torch.zeros(2, 7, 3))
    assert q.beta.shape == (3,)
    with torch.no_grad():
        q.beta.copy_(torch.tensor([10.0, -10.0, 0.0]))
    y = q(torch.zeros(2, 7, 3))
    assert y[..., 0].eq(1).all() and y[..., 1].eq(-1).all() and y[..., 2].eq(1).all()


def test_gradients_are_approx_sign_of_shifted_input():
    q = _rsign()
    x = leaf(3, 4, 5, 5, scale=0.7)
    g = upstream(x.shape)
    dx, dbeta = vjp(q(x), (x, q.beta), g)
    u = x.detach() + q.beta.detach().view(1, -1, 1, 1)
    d = (2 - 2 * u.abs()).clamp_min(0)
    torch.testing.assert_close(dx, g * d, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(dbeta, (g * d).sum(dim=(0, 2, 3)), rtol=1e-5, atol=1e-6)


def test_uncalibrated_rsign_refuses_to_run():
    with pytest.raises(RuntimeError, match="calibrate_"):
        RSign()(torch.zeros(1, 2, 3, 3))


def test_conv_arguments_honoured():
    check_conv_arguments(CONFIG)


def test_state_dict_round_trip_resnet():
    check_round_trip(CONFIG, TinyResNet, (resnet_input(),))


def test_state_dict_round_trip_restores_sized_shifts_in_an_uncalibrated_model():
    fresh = check_round_trip(CONFIG, TinyTransformer, (transformer_input(),))
    shifts = [m.beta for m in fresh.modules() if isinstance(m, RSign)]
    assert shifts and all(b.numel() > 0 for b in shifts)
    assert any(b.abs().sum() > 0 for b in shifts)  # trained for a step, then loaded

"""LRM: PCA over the channel dimension, the loss formula, buffers that survive a checkpoint."""

import math

import pytest
import torch

from binarydm.training.lrm import LRM, FeatureTap, channel_moments, lrm_block_names, principal_directions


def _reference_top_directions(feat: torch.Tensor, r: int) -> torch.Tensor:
    """Top-r right singular vectors of the centred (N*H*W, C) matrix (textbook PCA via SVD)."""
    x = feat.permute(0, 2, 3, 1).reshape(-1, feat.shape[1]).double()
    x = x - x.mean(0, keepdim=True)
    _, _, vh = torch.linalg.svd(x, full_matrices=False)
    return vh[:r].T


def test_pca_runs_over_channels_and_keeps_ceil_c_over_k():
    g = torch.Generator().manual_seed(0)
    # Channels with very different variances, a non-zero mean (centring matters), W != C.
    scale = torch.linspace(3.0, 0.1, 10).view(1, 10, 1, 1)
    feat = torch.randn(6, 10, 5, 7, generator=g) * scale + 4.0
    lrm = LRM(["a"], rank_divisor=4).fit_([feat])
    e = lrm.projection("a")
    assert e.shape == (10, math.ceil(10 / 4))
    ref = _reference_top_directions(feat, 3)
    # Same subspace (eigenvectors are defined up to sign): equal orthogonal projectors.
    torch.testing.assert_close((e.double() @ e.double().T), ref @ ref.T, atol=1e-5, rtol=0)
    torch.testing.assert_close(e.T @ e, torch.eye(3), atol=1e-5, rtol=0)


def test_moments_add_over_shards_like_one_batch():
    feat = torch.randn(8, 4, 3, 3)
    whole = channel_moments(feat)
    parts = [channel_moments(feat[:3]), channel_moments(feat[3:])]
    summed = [a + b for a, b in zip(*parts)]
    for w, s in zip(whole, summed):
        torch.testing.assert_close(w, s)
    e1, _ = principal_directions(*whole, 2)
    e2, _ = principal_directions(*summed, 2)
    torch.testing.assert_close(e1, e2)


@pytest.mark.parametrize("normalize", [False, True])
def test_loss_is_mean_over_blocks_of_projected_mse(normalize):
    g = torch.Generator().manual_seed(1)
    # Two feature maps (the 1x1-convolution path) and one sequence (N, C, L) (the einsum path); the
    # teacher's scales differ by 100x between blocks, which the normalised loss must not see.
    ft = [10 * torch.randn(2, 8, 4, 4, generator=g), torch.randn(2, 4, 2, 2, generator=g),
          0.1 * torch.randn(2, 6, 5, generator=g)]
    fs = [torch.randn(2, 8, 4, 4, generator=g), torch.randn(2, 4, 2, 2, generator=g), torch.randn(2, 6, 5, generator=g)]
    lrm = LRM(["x", "y", "z"], normalize=normalize).fit_(ft)
    expected = []
    for name, a, b in zip(["x", "y", "z"], ft, fs):
        e = lrm.projection(name)
        pa = torch.einsum("nc...,cr->nr...", a, e)
        pb = torch.einsum("nc...,cr->nr...", b, e)
        term = ((pa - pb) ** 2).mean()
        if normalize:  # v: the teacher's mean variance along the kept directions, recomputed here
            rows = a.movedim(1, -1).reshape(-1, a.shape[1]).double()
            term = term / (rows @ e.double()).var(dim=0, unbiased=True).mean().float()
        expected.append(term)
    torch.testing.assert_close(lrm(ft, fs), torch.stack(expected).mean(), rtol=1e-4, atol=1e-6)
    assert lrm(ft, ft).item() == 0.0


def test_normalised_loss_is_scale_free():
    g = torch.Generator().manual_seed(2)
    ft, fs = [torch.randn(4, 8, 4, 4, generator=g)], [torch.randn(4, 8, 4, 4, generator=g)]
    small = LRM(["b"]).fit_(ft)(ft, fs)
    large = LRM(["b"]).fit_([1000 * f for f in ft])([1000 * f for f in ft], [1000 * f for f in fs])
    torch.testing.assert_close(small, large, rtol=1e-4, atol=0)
    raw = LRM(["b"], normalize=False).fit_([1000 * f for f in ft])([1000 * f for f in ft], [1000 * f for f in fs])
    assert raw > 1e5 * small  # the paper's raw form grows with the features' square


def test_all_taps_follow_the_authors_hooks(tiny_unet):
    # TINY_UNET: DownBlock2D, AttnDownBlock2D / AttnUpBlock2D, UpBlock2D, one layer per block.
    blocks = lrm_block_names(tiny_unet, "blocks")
    taps = lrm_block_names(tiny_unet, "all")
    assert blocks == ["down_blocks.0", "down_blocks.1", "mid_block", "up_blocks.0", "up_blocks.1"]
    n = tiny_unet.config.layers_per_block
    assert taps[:n + 1] == [f"down_blocks.0.resnets.{j}" for j in range(n)] + ["down_blocks.0.downsamplers.0"]
    assert f"down_blocks.1.attentions.{n - 1}" in taps and f"up_blocks.0.attentions.{n}" in taps
    assert "up_blocks.0.upsamplers.0" in taps and "mid_block" in taps
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([3, 500])
    with FeatureTap(tiny_unet, taps) as tap:  # every tap produces a feature map
        tiny_unet(x, t)
    assert [f.dim() for f in tap.ordered()] == [4] * len(taps)
    with pytest.raises(ValueError, match="lrm_taps"):
        lrm_block_names(tiny_unet, "every")


def test_projections_fixed_once_and_restored_from_state_dict():
    feat = [torch.randn(3, 8, 4, 4)]
    lrm = LRM(["b"]).fit_(feat)
    with pytest.raises(RuntimeError, match="already fitted"):
        lrm.fit_(feat)
    fresh = LRM(["b"])
    assert not fresh.is_fitted
    fresh.load_state_dict(lrm.state_dict())
    assert fresh.is_fitted
    assert torch.equal(fresh.projection("b"), lrm.projection("b"))


def test_unfitted_loss_raises():
    with pytest.raises(RuntimeError, match="not fitted"):
        LRM(["b"])([torch.zeros(1, 4, 2, 2)], [torch.zeros(1, 4, 2, 2)])


def test_feature_tap_takes_hidden_state_of_every_block(tiny_unet, unet_batch):
    names = lrm_block_names(tiny_unet)
    assert names == ["down_blocks.0", "down_blocks.1", "mid_block", "up_blocks.0", "up_blocks.1"]
    with FeatureTap(tiny_unet, names) as tap:
        tiny_unet(*unet_batch)
    feats = tap.ordered()
    # Down blocks return (hidden, res_samples): the hidden state (a tensor) is what is kept.
    assert [f.shape[1] for f in feats] == [8, 16, 16, 16, 8]
    assert all(isinstance(f, torch.Tensor) and f.dim() == 4 for f in feats)
    # Hooks are removed on exit.
    assert all(not tiny_unet.get_submodule(n)._forward_hooks for n in names)


def test_feature_tap_stop_ends_the_forward_after_the_last_block(tiny_unet, unet_batch):
    names = lrm_block_names(tiny_unet)
    with FeatureTap(tiny_unet, names) as full:
        tiny_unet(*unet_batch)
    head_calls = []
    handle = tiny_unet.conv_out.register_forward_hook(lambda *a: head_calls.append(1))
    try:
        with FeatureTap(tiny_unet, names, stop=True) as tap:
            out = tiny_unet(*unet_batch)
            pytest.fail(f"the forward pass went on after the last block (returned {type(out)})")
    finally:
        handle.remove()
    assert head_calls == []  # the output head never ran
    for a, b in zip(full.ordered(), tap.ordered()):
        assert torch.equal(a, b)
    # Any other error inside the block still propagates.
    with pytest.raises(ZeroDivisionError):
        with FeatureTap(tiny_unet, names, stop=True):
            1 / 0

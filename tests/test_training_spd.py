"""BiDM's space patched distillation: the patch grid, the normalised Gram maps, the loss in the QAT step."""

import copy

import pytest
import torch
from diffusers import DDPMScheduler

import binarydm
from binarydm.training.config import LossConfig
from binarydm.training.lrm import FeatureTap, lrm_block_names
from binarydm.training.module import DiffusionQAT
from binarydm.training.spd import patches, spd_loss


def _reference(ft, fs, grid=4):
    """The authors' loop, written out: patch starts at int(linspace(0, W, P + 1))[:-1], W // P wide; each
    patch's per-channel Gram A A^T over its rows, divided by the norm of the whole tensor; mean of the norms."""
    terms = []
    for a, b in zip(ft, fs):
        size = a.shape[-1]
        width = size // grid
        starts = [int(v) for v in torch.linspace(0, size, grid + 1)[:-1]]
        for i in starts:
            for j in starts:
                maps = []
                for f in (b, a):
                    p = f[:, :, i:i + width, j:j + width].double()
                    q = torch.einsum("bchw,bcgw->bchg", p, p)
                    maps.append(q / torch.sqrt((q ** 2).sum()))
                terms.append(torch.sqrt(((maps[0] - maps[1]) ** 2).sum()))
    return torch.stack(terms).mean()


def test_loss_matches_the_authors_loop():
    g = torch.Generator().manual_seed(0)
    ft = [torch.randn(3, 5, 16, 16, generator=g), 4 * torch.randn(3, 2, 8, 8, generator=g)]
    fs = [f + 0.3 * torch.randn(f.shape, generator=g) for f in ft]
    torch.testing.assert_close(spd_loss(ft, fs).double(), _reference(ft, fs), rtol=1e-5, atol=1e-6)


def test_loss_is_zero_for_equal_features_and_blind_to_a_global_scale():
    f = torch.randn(2, 3, 8, 8)
    assert spd_loss([f], [f.clone()]).item() == 0.0
    assert spd_loss([f], [5.0 * f]).item() == pytest.approx(0.0, abs=1e-6)  # each map is normalised
    assert spd_loss([f], [f + torch.randn_like(f)]).item() > 0.05


def test_small_features_use_as_many_patches_as_pixels():
    f = torch.arange(2 * 2 * 2 * 2, dtype=torch.float32).view(2, 2, 2, 2)
    cut = patches(f, 4)
    assert len(cut) == 4 and all(p.shape == (2, 2, 1, 1) for p in cut)
    assert len(patches(torch.zeros(1, 1, 12, 12), 4)) == 16
    assert torch.isfinite(spd_loss([f], [f.flip(-1)]))


def test_gradient_reaches_the_student_only():
    ft = torch.randn(2, 3, 8, 8, requires_grad=True)
    fs = torch.randn(2, 3, 8, 8, requires_grad=True)
    spd_loss([ft], [fs]).backward()
    assert fs.grad.abs().sum() > 0 and ft.grad is None


@pytest.mark.parametrize("lrm_weight", [0.0, 1.0])
def test_spd_is_added_to_the_qat_loss_with_its_weight(tiny_unet, unet_batch, lrm_weight):
    teacher = copy.deepcopy(tiny_unet).eval()
    student = binarydm.binarize_(tiny_unet, binarydm.QuantConfig(a_bits=32, keep_bits=32))
    x, t = unet_batch
    eps = torch.randn(x.shape, generator=torch.Generator().manual_seed(2))
    module = DiffusionQAT(student, DDPMScheduler(), teacher,
                          loss=LossConfig(lrm_weight=lrm_weight, spd_weight=0.5, spd_taps="all"))
    with torch.no_grad():
        losses = module.compute_losses(x, t, eps)
    names = lrm_block_names(student, "all")
    with torch.no_grad(), FeatureTap(teacher, names) as ttap, FeatureTap(student, names) as stap:
        teacher(x, t)
        student(x, t)
    torch.testing.assert_close(losses["spd"], spd_loss(ttap.ordered(), stap.ordered()))
    lrm = lrm_weight * losses["lrm"] if lrm_weight else 0.0
    torch.testing.assert_close(losses["loss"], losses["simple"] + lrm + 0.5 * losses["spd"])
    assert ("lrm" in losses) == bool(lrm_weight)


def test_spd_off_by_default_and_bad_taps_refused(tiny_unet):
    teacher = copy.deepcopy(tiny_unet)
    student = binarydm.binarize_(tiny_unet, binarydm.QuantConfig(a_bits=32, keep_bits=32))
    assert not DiffusionQAT(student, DDPMScheduler(), teacher).use_spd
    with pytest.raises(ValueError, match="loss.spd_taps"):
        DiffusionQAT(student, DDPMScheduler(), teacher, loss=LossConfig(spd_weight=1e-2, spd_taps="every"))

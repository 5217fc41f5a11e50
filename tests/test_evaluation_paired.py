import torch
from diffusers import DDPMScheduler

from binarydm.evaluation import paired_mse

from conftest import make_tiny_unet


def test_paired_mse_matches_its_definition_and_is_paired():
    unet, other = make_tiny_unet(seed=0).eval(), make_tiny_unet(seed=1).eval()
    abar = DDPMScheduler(num_train_timesteps=1000).alphas_cumprod
    x0 = torch.rand(5, 3, 8, 8, generator=torch.Generator().manual_seed(3)) * 2 - 1
    got = paired_mse(unet, abar, x0, teacher=other, seed=4, batch_size=2)  # batches of 2, 2, 1
    g = torch.Generator().manual_seed(4)
    t = torch.randint(0, 1000, (5,), generator=g)
    eps = torch.randn(x0.shape, generator=g)
    a = abar[t].view(5, 1, 1, 1)
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * eps
    with torch.no_grad():
        pred, ref = unet(x_t, t).sample, other(x_t, t).sample
    torch.testing.assert_close(got["mse_noise"], (pred - eps).pow(2).mean().item(), rtol=1e-5, atol=0)
    torch.testing.assert_close(got["mse_teacher"], (pred - ref).pow(2).mean().item(), rtol=1e-5, atol=0)
    assert paired_mse(unet, abar, x0, teacher=unet, seed=4)["mse_teacher"] == 0.0
    assert paired_mse(unet, abar, x0, seed=4, batch_size=2) == {"mse_noise": got["mse_noise"]}  # same inputs, same score
    assert paired_mse(unet, abar, x0, seed=5)["mse_noise"] != got["mse_noise"]

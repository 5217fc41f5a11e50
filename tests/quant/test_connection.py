"""BiDM's cross-timestep connection: which stages, the three modes, save/load, copies, the training passes."""

import copy

import pytest
import torch
from diffusers import DDIMPipeline, DDIMScheduler, DDPMScheduler, UNet2DModel

import binarydm
from binarydm.quant.connection import BUCKET, INIT, attach, connection_of, output_stages
from binarydm.training.module import DiffusionQAT

from conftest import make_tiny_unet

STAGES = ["up_blocks.0.attentions.0", "up_blocks.0.upsamplers.0", "up_blocks.1.resnets.0", "up_blocks.1.resnets.1"]


def _connected(n=8, seed=0):
    unet = binarydm.binarize_(make_tiny_unet(seed), binarydm.QuantConfig(a_bits=32, keep_bits=32,
                                                                         timestep_connection=n))
    connection = connection_of(unet)
    with torch.no_grad():  # a table that is not constant, so that row and column mistakes show
        connection.alpha.copy_(torch.rand(connection.alpha.shape, generator=torch.Generator().manual_seed(3)))
    return unet, connection


class _Probe:
    """A stage's output before (``before=True``: registered first) or after the connection mixes it."""

    def __init__(self, unet, name, before):
        self.outs = []
        unet.get_submodule(name).register_forward_hook(self, prepend=before)

    def __call__(self, module, args, output):
        self.outs.append((output[0] if isinstance(output, (tuple, list)) else output).detach().clone())


def _probes(unet):
    return {n: (_Probe(unet, n, True), _Probe(unet, n, False)) for n in STAGES}


def test_output_stages_are_ldm_output_blocks_with_the_upsampler_closing_a_level(tiny_unet):
    assert output_stages(tiny_unet) == STAGES
    assert connection_of(binarydm.binarize_(tiny_unet, "w1a4")) is None
    unet = binarydm.binarize_(make_tiny_unet(), binarydm.QuantConfig(timestep_connection=2))
    assert connection_of(unet).stages == STAGES[-2:]
    assert torch.equal(connection_of(unet).alpha, torch.full((100, 2), INIT))
    with pytest.raises(ValueError, match="up_blocks"):
        attach(torch.nn.Linear(2, 2), 4)


def test_carry_mixes_each_stage_with_the_previous_calls_output_and_restarts_on_a_new_trajectory():
    unet, connection = _connected()
    probes = _probes(unet)
    x = torch.randn(2, 3, 8, 8)
    steps = [torch.tensor([500, 430]), torch.tensor([480, 420]), torch.tensor(410)]
    with torch.no_grad():
        for t in steps:
            unet(x, t)
        unet(x, torch.tensor([900, 900]))  # not below the last call: a new trajectory
    for k, name in enumerate(STAGES):
        before, after = probes[name]
        assert torch.equal(after.outs[0], before.outs[0])  # nothing to mix at a trajectory's first call
        for i in (1, 2):
            t = steps[i].expand(2)
            a = connection.alpha[t // BUCKET, k].detach().view(-1, 1, 1, 1)
            torch.testing.assert_close(after.outs[i], (1 - a) * before.outs[i] + a * after.outs[i - 1])
        assert torch.equal(after.outs[3], before.outs[3])
    connection.reset()
    with torch.no_grad():
        unet(x, torch.tensor([10, 10]))
    assert torch.equal(probes[STAGES[0]][1].outs[4], probes[STAGES[0]][0].outs[4])


def test_record_then_replay_mixes_the_recorded_outputs_and_trains_the_table():
    unet, connection = _connected()
    probes = _probes(unet)
    x1, x = torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8)
    t = torch.tensor([200, 999])
    with torch.no_grad(), connection.recording():
        unet(x1, t + 1)
    with connection.replaying():
        out = unet(x, t).sample
    for k, name in enumerate(STAGES):
        before, after = probes[name]
        assert torch.equal(after.outs[0], before.outs[0])  # recording mixes nothing
        a = connection.alpha[t // BUCKET, k].detach().view(-1, 1, 1, 1)
        torch.testing.assert_close(after.outs[1], (1 - a) * before.outs[1] + a * after.outs[0])
    out.square().mean().backward()
    touched = connection.alpha.grad.abs().sum(dim=1) > 0
    assert touched[[20, 99]].all() and touched.sum() == 2  # only the rows of the batch's timesteps
    assert connection.mode == "carry"


def test_state_dict_and_diffusers_round_trip_and_sampling(tmp_path):
    unet, connection = _connected()
    unet.eval()
    state = copy.deepcopy(unet.state_dict())
    assert "timestep_connection.alpha" in state
    fresh = binarydm.binarize_(make_tiny_unet(seed=5), binarydm.QuantConfig(a_bits=32, keep_bits=32,
                                                                             timestep_connection=8))
    fresh.load_state_dict(state)
    unet.save_pretrained(tmp_path / "unet")
    loaded = UNet2DModel.from_pretrained(tmp_path / "unet")
    scheduler = DDIMScheduler(num_train_timesteps=1000)
    images = []
    for model in (unet, fresh, loaded):
        assert torch.equal(connection_of(model).alpha, connection.alpha)
        pipe = DDIMPipeline(unet=model, scheduler=scheduler)
        images.append(pipe(batch_size=2, num_inference_steps=4, generator=torch.Generator().manual_seed(0),
                           output_type="np").images)
    assert (images[0] == images[1]).all() and (images[0] == images[2]).all()


def test_a_copy_mixes_with_its_own_table():
    unet, connection = _connected()
    twin = copy.deepcopy(unet)
    assert connection_of(twin) is not connection
    with torch.no_grad():
        connection_of(twin).alpha.fill_(1.0)  # the twin's stages become their previous outputs
    x = torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        a1, b1 = unet(x, torch.tensor([300])).sample, twin(x, torch.tensor([300])).sample
        a2, b2 = unet(x, torch.tensor([290])).sample, twin(x, torch.tensor([290])).sample
    assert torch.equal(a1, b1) and not torch.equal(a2, b2)


def test_training_records_the_student_at_t_plus_one_with_the_same_x0_and_noise(tiny_unet):
    student, connection = _connected()
    module = DiffusionQAT(student, DDPMScheduler(), teacher=copy.deepcopy(tiny_unet))
    x0, eps = torch.randn(3, 3, 8, 8), torch.randn(3, 3, 8, 8)
    t = torch.tensor([0, 500, 999])
    abar = module.alphas_cumprod
    x_t = abar[t].sqrt().view(-1, 1, 1, 1) * x0 + (1 - abar[t]).sqrt().view(-1, 1, 1, 1) * eps
    x1, t1 = module.previous_inputs(x_t, t, eps)
    assert t1.tolist() == [1, 501, 999]
    expected = abar[t1].sqrt().view(-1, 1, 1, 1) * x0 + (1 - abar[t1]).sqrt().view(-1, 1, 1, 1) * eps
    torch.testing.assert_close(x1, expected, rtol=1e-4, atol=1e-4)
    seen = []
    handle = student.register_forward_pre_hook(lambda m, args: seen.append((connection.mode, args[1].clone())))
    losses = module.compute_losses(x_t, t, eps)
    handle.remove()
    assert [m for m, _ in seen] == ["record", "replay"] and torch.equal(seen[0][1], t1)
    losses["loss"].backward()
    assert connection.alpha.grad.abs().sum() > 0


def test_gradient_checkpointing_recomputes_the_same_mix(tiny_unet):
    """A checkpointed stage runs again in the backward pass, after the replay context has exited: it must mix
    what its forward mixed (the same loss and the same gradients as without checkpointing)."""
    grads = []
    for checkpointing in (False, True):
        student, connection = _connected()
        if checkpointing:
            student.enable_gradient_checkpointing()
        student.train()
        module = DiffusionQAT(student, DDPMScheduler(), teacher=copy.deepcopy(tiny_unet))
        g = torch.Generator().manual_seed(5)
        x0, eps = torch.randn(2, 3, 8, 8, generator=g), torch.randn(2, 3, 8, 8, generator=g)
        t = torch.tensor([40, 800])
        abar = module.alphas_cumprod[t].view(-1, 1, 1, 1)
        with torch.no_grad():  # a stale carry cache of the batch's shape, as a sampled grid leaves one
            student(torch.randn(2, 3, 8, 8), torch.tensor([999, 999]))
            student(torch.randn(2, 3, 8, 8), torch.tensor([900, 900]))
        losses = module.compute_losses(abar.sqrt() * x0 + (1 - abar).sqrt() * eps, t, eps)
        losses["loss"].backward()
        grads.append(connection.alpha.grad.clone())
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-5, atol=1e-7)
    assert grads[0].abs().sum() > 0


def test_calibration_starts_and_leaves_a_fresh_trajectory():
    unet, connection = _connected()
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        unet(x, torch.tensor([500, 500]))
    assert connection._cache
    binarydm.calibrate_(unet, x, torch.tensor([400, 400]))  # below the last call: carry would have mixed
    assert not connection._cache and connection._last_t is None

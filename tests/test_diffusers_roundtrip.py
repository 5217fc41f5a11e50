"""Binarized models that live in diffusers: save_pretrained / from_pretrained round trips (UNet2DModel,
UNet2DConditionModel, pipelines), the loud failure without binarydm, and every form binarydm.load reads."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import TINY_UNET, make_tiny_unet

import binarydm
from binarydm.errors import UsageError
from binarydm.packing import PackedFormatError, export_packed, save_student_dir
from binarydm.packing.files import CHECKSUM_FILE

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}

# A tiny Stable-Diffusion-style UNet: cross-attention down/up blocks and a cross-attention mid block.
TINY_COND = dict(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(8, 16), layers_per_block=1,
                 down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                 up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), norm_num_groups=4, attention_head_dim=4,
                 cross_attention_dim=12)


def make_cond_unet(seed: int = 0, **overrides):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(**{**TINY_COND, **overrides})


def inputs(model):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, model.config.in_channels, 8, 8, generator=g)
    t = torch.tensor([10, 700])
    kw = {}
    if hasattr(model.config, "cross_attention_dim") and model.config.get("cross_attention_dim"):
        kw["encoder_hidden_states"] = torch.randn(2, 3, model.config.cross_attention_dim, generator=g)
    return x, t, kw


def output(model, x, t, kw):
    with torch.no_grad():
        return model(x, t, **kw).sample


def binarized(kind: str, train_steps: int = 2):
    """A binarized, calibrated tiny UNet with a few training steps (scales and steps moved off their init)."""
    model = make_tiny_unet() if kind == "unet2d" else make_cond_unet()
    x, t, kw = inputs(model)
    fp = output(model.eval(), x, t, kw)
    binarydm.binarize_(model, "w1a4")
    binarydm.calibrate_(model, x, t, **kw)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(train_steps):
        opt.zero_grad()
        model(x, t, **kw).sample.pow(2).mean().backward()
        opt.step()
    return model.eval(), (x, t, kw), fp


@pytest.fixture(params=["unet2d", "cond"])
def student(request):
    return binarized(request.param)


def test_binarize_records_quantization_config(student):
    model, _, _ = student
    qc = model.config["quantization_config"]
    assert qc["quant_method"] == "binarydm" and qc["format_version"] == 1
    assert binarydm.QuantConfig.from_dict(qc["quant_config"]) == binarydm.QuantConfig.preset("w1a4")


def test_save_pretrained_from_pretrained_is_bit_exact(student, tmp_path):
    model, (x, t, kw), fp = student
    ref = output(model, x, t, kw)
    assert not torch.equal(ref, fp)
    model.save_pretrained(tmp_path / "m")
    loaded = type(model).from_pretrained(tmp_path / "m")
    n = sum(isinstance(m, (binarydm.quant.QuantConv2d, binarydm.quant.QuantLinear)) for m in loaded.modules())
    assert n == sum(isinstance(m, (binarydm.quant.QuantConv2d, binarydm.quant.QuantLinear)) for m in model.modules())
    assert torch.equal(output(loaded, x, t, kw), ref)
    # and again: a loaded model saves what it loaded
    loaded.save_pretrained(tmp_path / "m2")
    assert torch.equal(output(type(model).from_pretrained(tmp_path / "m2"), x, t, kw), ref)
    assert torch.equal(output(binarydm.load(tmp_path / "m2"), x, t, kw), ref)


def _float32_parts(model):
    """The tensors a half-precision binarized model keeps float32: quantized layers' latent weights and every
    quantizer's own tensors."""
    from binarydm.quant.base import Quantizer

    layers = [m.weight for m in model.modules()
              if isinstance(m, (binarydm.quant.QuantConv2d, binarydm.quant.QuantLinear)) and m.weight_quantizer is not None]
    return layers + [p for m in model.modules() if isinstance(m, Quantizer) for p in m.parameters()]


@pytest.mark.parametrize("preset", ["w1a4", "bidm"])
def test_half_and_torch_dtype_after_from_pretrained(preset, tmp_path):
    """A binarized model loaded through diffusers casts like any model; its latent weights and scales stay float32."""
    model = make_tiny_unet()
    x, t, kw = inputs(model)
    binarydm.binarize_(model, binarydm.algorithms.preset("lmb" if preset == "w1a4" else preset))
    binarydm.calibrate_(model, x, t)
    model.eval().save_pretrained(tmp_path / "m")
    cls = type(model)
    half = cls.from_pretrained(tmp_path / "m").half()
    loaded16 = cls.from_pretrained(tmp_path / "m", torch_dtype=torch.float16)
    for m16 in (half, loaded16):
        assert m16.conv_norm_out.weight.dtype == torch.float16 and m16.time_embedding.linear_1.bias.dtype == torch.float16
        assert all(p.dtype == torch.float32 for p in _float32_parts(m16))
    y16 = output(half, x.half(), t, kw)
    assert y16.dtype == torch.float16 and torch.isfinite(y16).all()
    assert torch.equal(y16, output(loaded16, x.half(), t, kw))
    # Layer by layer, the fp16 model computes what the float32 one does on the same (fp16-valued) input, up to
    # fp16 arithmetic: the binarized weights and activation codes are the float32 ones. Over a whole UNet, fp16
    # rounding of the activations moves a few codes across their rounding boundaries and that compounds (the
    # shipped W1A4 student: mean |fp16 - fp32| = 3.6 / 255 over 16 DDIM-25 samples, docs/evaluation.md).
    layers32 = dict(model.named_modules())
    checked = 0
    for name, layer16 in half.named_modules():
        if isinstance(layer16, binarydm.quant.QuantConv2d) and layer16.weight_quantizer is not None:
            inp = torch.randn(2, layer16.in_channels, 8, 8, generator=torch.Generator().manual_seed(2)).half()
            with torch.no_grad():
                got, want = layer16(inp).float(), layers32[name](inp.float())
            assert ((got - want).norm() / want.norm()).item() < 5e-3, name
            checked += 1
    assert checked > 5
    kept = _float32_parts(cls.from_pretrained(tmp_path / "m"))
    assert all(torch.equal(a, b) for a, b in zip(_float32_parts(half), kept))  # not rounded on the way


def test_quantizer_flags_survive_the_round_trip(tmp_path):
    """Quantizers switched off (mid progressive initialisation) stay off after a reload."""
    model, (x, t, kw), _ = binarized("unet2d", 0)
    binarydm.set_quant_state_(model, weights=False, activations=False, prefixes=["down_blocks.0"])
    ref = output(model, x, t, kw)
    model.save_pretrained(tmp_path)
    loaded = type(model).from_pretrained(tmp_path)
    assert torch.equal(output(loaded, x, t, kw), ref)
    assert not loaded.down_blocks[0].resnets[0].conv1.weight_quantizer.enabled


def test_filter_fn_exclusions_round_trip(tmp_path):
    model = make_tiny_unet()
    x, t, kw = inputs(model)
    binarydm.binarize_(model, "w1a4", filter_fn=lambda m, name: not name.startswith("up_blocks.1"))
    binarydm.calibrate_(model, x, t)
    assert "up_blocks.1.resnets.0.conv1" in model.config["quantization_config"]["excluded"]
    model.save_pretrained(tmp_path)
    loaded = type(model).from_pretrained(tmp_path)
    assert type(loaded.up_blocks[1].resnets[0].conv1) is torch.nn.Conv2d
    assert torch.equal(output(loaded.eval(), x, t, kw), output(model.eval(), x, t, kw))


def test_ddim_pipeline_round_trip_gives_identical_images(tmp_path):
    from diffusers import DDIMPipeline, DDIMScheduler, DiffusionPipeline

    model, _, _ = binarized("unet2d")
    pipe = DDIMPipeline(unet=model, scheduler=DDIMScheduler(num_train_timesteps=1000))
    pipe.set_progress_bar_config(disable=True)

    def images(p):
        p.set_progress_bar_config(disable=True)
        return p(batch_size=2, num_inference_steps=3, generator=torch.Generator().manual_seed(0),
                 output_type="np").images

    ref = images(pipe)
    pipe.save_pretrained(tmp_path / "pipe")
    assert json.loads((tmp_path / "pipe" / "unet" / "config.json").read_text())["quantization_config"]
    for loaded in (DDIMPipeline.from_pretrained(tmp_path / "pipe"), DiffusionPipeline.from_pretrained(tmp_path / "pipe"),
                   binarydm.load(tmp_path / "pipe")):
        assert type(loaded).__name__ == "DDIMPipeline"
        assert (images(loaded) == ref).all()


def test_conditional_pipeline_round_trip(tmp_path):
    """A pipeline holding a binarized UNet2DConditionModel (a UNet + scheduler pipeline; a Stable Diffusion
    directory adds its untouched text encoder and VAE, loaded by diffusers as they are)."""
    from diffusers import DDIMScheduler, DiffusionPipeline

    model, (x, t, kw), _ = binarized("cond")
    model.save_pretrained(tmp_path / "pipe" / "unet")
    DDIMScheduler().save_pretrained(tmp_path / "pipe" / "scheduler")
    (tmp_path / "pipe" / "model_index.json").write_text(json.dumps(
        {"_class_name": "DDIMPipeline", "unet": ["diffusers", "UNet2DConditionModel"],
         "scheduler": ["diffusers", "DDIMScheduler"]}))
    loaded = DiffusionPipeline.from_pretrained(tmp_path / "pipe")
    assert torch.equal(output(loaded.unet, x, t, kw), output(model, x, t, kw))
    assert torch.equal(output(binarydm.load(tmp_path / "pipe").unet, x, t, kw), output(model, x, t, kw))


def test_plain_diffusers_refuses_a_binarized_checkpoint(tmp_path):
    """Without `import binarydm` no path gives back a full-precision model: diffusers raises."""
    from diffusers import DDIMPipeline, DDIMScheduler

    model, _, _ = binarized("unet2d", 0)
    model.save_pretrained(tmp_path / "unet")
    DDIMPipeline(unet=model, scheduler=DDIMScheduler()).save_pretrained(tmp_path / "pipe")
    code = (
        "import sys\n"
        "from diffusers import UNet2DModel, DDIMPipeline\n"
        "for load in (lambda: UNet2DModel.from_pretrained(sys.argv[1]), lambda: DDIMPipeline.from_pretrained(sys.argv[2])):\n"
        "    try:\n"
        "        load()\n"
        "    except Exception as e:\n"
        "        print('RAISED', type(e).__name__, e)\n"
        "    else:\n"
        "        print('LOADED')\n"
        "assert 'binarydm' not in sys.modules\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "unet"), str(tmp_path / "pipe")],
                          capture_output=True, text=True, env=ENV, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [line for line in proc.stdout.splitlines() if line.startswith(("RAISED", "LOADED"))]
    assert len(lines) == 2 and all(line.startswith("RAISED") for line in lines), proc.stdout
    assert all("binarydm" in line for line in lines)


def test_on_the_fly_quantization_is_refused(tmp_path):
    from diffusers import UNet2DModel

    from binarydm.packing import BinaryDMQuantizationConfig

    make_tiny_unet().save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="calibrat|quantiz"):
        UNet2DModel.from_pretrained(tmp_path, quantization_config=BinaryDMQuantizationConfig("w1a4"))


# ---- the Stable Diffusion UNet ------------------------------------------------------------------------
def test_cross_attention_is_binarized_like_self_attention():
    from binarydm.quant import QuantAttnProcessor, QuantLinear

    model, (x, t, kw), _ = binarized("cond", 0)
    attn2 = model.down_blocks[1].attentions[0].transformer_blocks[0].attn2  # cross-attention
    attn1 = model.down_blocks[1].attentions[0].transformer_blocks[0].attn1  # self-attention
    for attn in (attn1, attn2):
        assert isinstance(attn.processor, QuantAttnProcessor)
        assert all(isinstance(getattr(attn, n), QuantLinear) for n in ("to_q", "to_k", "to_v"))
        assert all(q.initialized and q.enabled for q in attn.processor.quantizers())
    # k and v of the cross-attention read the (4-bit quantized) encoder states
    assert attn2.to_k.in_features == TINY_COND["cross_attention_dim"] and attn2.to_k.act_quantizer.bits == 4


def test_lrm_taps_and_progressive_groups_of_the_conditional_unet():
    from binarydm.quant import progressive_groups
    from binarydm.training.lrm import FeatureTap, lrm_block_names

    model, (x, t, kw), _ = binarized("cond", 0)
    assert lrm_block_names(model) == ["down_blocks.0", "down_blocks.1", "mid_block", "up_blocks.0", "up_blocks.1"]
    names = lrm_block_names(model, "all")
    assert "down_blocks.1.attentions.0" in names and "down_blocks.0.downsamplers.0" in names
    with FeatureTap(model, names) as tap, torch.no_grad():
        model(x, t, **kw)
    assert all(isinstance(f, torch.Tensor) for f in tap.ordered())
    groups = progressive_groups(model)
    assert [g for g, _ in groups] == ["mid_block", "level_1", "level_0"]
    assert groups[1][1] == ["down_blocks.1", "up_blocks.0"]


def test_packed_conditional_unet_reloads_without_a_class_name(tmp_path):
    model, (x, t, kw), _ = binarized("cond")
    path = export_packed(model, dict(model.config), "w1a4", tmp_path / "c.safetensors")
    loaded = binarydm.load(path)
    assert type(loaded).__name__ == "UNet2DConditionModel"
    assert torch.equal(output(loaded, x, t, kw), output(model, x, t, kw))


# ---- binarydm.load ---------------------------------------------------------------------------------------
def test_load_student_directory_both_layouts(tmp_path):
    from safetensors.torch import save_file

    model, (x, t, kw), _ = binarized("unet2d")
    ref = output(model, x, t, kw)
    d = save_student_dir(model, None, None, tmp_path / "student", scheduler_config={"num_train_timesteps": 1000})
    assert {p.name for p in d.iterdir()} == {"config.json", "diffusion_pytorch_model.safetensors",
                                            "scheduler_config.json", CHECKSUM_FILE}
    assert torch.equal(output(binarydm.load(d), x, t, kw), ref)
    from diffusers import UNet2DModel

    assert torch.equal(output(UNet2DModel.from_pretrained(d), x, t, kw), ref)
    # the earlier layout: student.safetensors + quant_config.json + unet_config.json
    old = tmp_path / "old"
    old.mkdir()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(old / "student.safetensors"))
    (old / "quant_config.json").write_text(json.dumps(binarydm.QuantConfig.preset("w1a4").to_dict()))
    (old / "unet_config.json").write_text(json.dumps({k: list(v) if isinstance(v, tuple) else v
                                                      for k, v in TINY_UNET.items()}))
    assert torch.equal(output(binarydm.load(old), x, t, kw), ref)
    # a run directory holding student/
    (tmp_path / "run").mkdir()
    d.rename(tmp_path / "run" / "student")
    assert torch.equal(output(binarydm.load(tmp_path / "run"), x, t, kw), ref)


def test_load_checks_integrity(tmp_path):
    model, _, _ = binarized("unet2d", 0)
    d = save_student_dir(model, None, None, tmp_path / "s")
    weights = d / "diffusion_pytorch_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0x01
    weights.write_bytes(bytes(data))
    with pytest.raises(PackedFormatError, match="does not match its checksum"):
        binarydm.load(d)
    packed = export_packed(model, dict(model.config), "w1a4", tmp_path / "p.safetensors")
    data = bytearray(packed.read_bytes())
    data[-3] ^= 0x01
    packed.write_bytes(bytes(data))
    with pytest.raises(PackedFormatError, match="checksum"):
        binarydm.load(packed)


def test_load_refuses_other_things_in_one_line(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    make_tiny_unet().save_pretrained(tmp_path / "fp")
    for bad, why in ((tmp_path / "notes.txt", "not a form binarydm writes"), (tmp_path / "missing", "no such file"),
                     (tmp_path / "fp", "full-precision"), (tmp_path, "holds no binarized model")):
        with pytest.raises(UsageError) as err:
            binarydm.load(bad)
        message = str(err.value)
        assert "\n" not in message and message.startswith(str(bad)) and why in message
        assert "packed" in message and "pipeline" in message and ".ckpt" in message


def test_load_training_checkpoint_and_conditional_recipe_cli(tmp_path):
    """configs/tiny_cond.yaml: a class-conditional UNet2DConditionModel trained from the CLI (labels as one
    token through encoder_hid_proj), exported, reloaded from every form and sampled with label=."""
    from binarydm.unets import condition_kwargs

    run = subprocess.run([sys.executable, "-m", "binarydm.train", "config=tiny_cond", f"out_dir={tmp_path}",
                          "trainer.max_steps=6", "ema.enabled=true"],
                         capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    run_dir = tmp_path / "tiny_cond"
    student = binarydm.load(run_dir / "student")
    assert type(student).__name__ == "UNet2DConditionModel"
    assert "encoder_hid_proj" in student.config["quantization_config"]["quant_config"]["keep"]
    assert type(student.encoder_hid_proj).__name__ == "QuantLinear"  # kept at 8 bits
    assert student.encoder_hid_proj.weight_quantizer.bits == 8
    x = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([5, 300, 900])
    cond = condition_kwargs(student.config, [0, 4, 9])
    ref = output(student, x, t, cond)
    # the labels matter
    assert not torch.equal(ref, output(student, x, t, condition_kwargs(student.config, [1, 5, 8])))
    packed = binarydm.load(run_dir / "student.packed.safetensors")
    assert torch.equal(output(packed, x, t, cond), ref)
    # the last checkpoint with the run's config.yaml: the EMA weights, as exported
    ckpt = binarydm.load(run_dir / "checkpoints" / "last.ckpt")
    assert torch.equal(output(ckpt, x, t, cond), ref)
    raw = binarydm.load(run_dir / "checkpoints" / "last.ckpt", ema=False)
    assert not torch.equal(output(raw, x, t, cond), ref)
    # ... and the CLI's ema=false packs those raw weights; on a form with one set of weights it is refused
    from binarydm.export import main as export_main

    export_main([f"ckpt={run_dir / 'checkpoints' / 'last.ckpt'}", "ema=false", f"out={tmp_path / 'raw.safetensors'}"])
    assert torch.equal(output(binarydm.load(tmp_path / "raw.safetensors"), x, t, cond), output(raw, x, t, cond))
    refused = subprocess.run([sys.executable, "-m", "binarydm.sample", f"ckpt={run_dir / 'student'}", "ema=false",
                              f"out={tmp_path / 's0'}"], capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=300)
    assert refused.returncode == 2 and refused.stderr.strip().splitlines() == [
        f"error: ema=false: ckpt={run_dir / 'student'} holds one set of weights (only a training .ckpt keeps raw "
        "and averaged ones); drop ema=false or name a .ckpt of the run"]
    # a checkpoint away from its run directory: one line saying what is missing
    lone = tmp_path / "lone" / "last.ckpt"
    lone.parent.mkdir()
    lone.write_bytes((run_dir / "checkpoints" / "last.ckpt").read_bytes())
    with pytest.raises(UsageError, match="config.yaml"):
        binarydm.load(lone)
    # sampling from the CLI takes the label
    out = tmp_path / "samples"
    proc = subprocess.run([sys.executable, "-m", "binarydm.sample", f"ckpt={run_dir / 'student'}", "num=2", "steps=2",
                           "label=3", f"out={out}"], capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert len(list((out / "images").glob("*.png"))) == 2
    # ... and reads the training checkpoint (with its run's config.yaml) like the student it exported
    from binarydm.sample import main as sample_main

    sample_main([f"ckpt={run_dir / 'checkpoints' / 'last.ckpt'}", "num=2", "steps=2", "label=3",
                 f"out={tmp_path / 'from_ckpt'}"])
    for name in ("00000.png", "00001.png"):
        assert (tmp_path / "from_ckpt" / "images" / name).read_bytes() == (out / "images" / name).read_bytes()
    bad = subprocess.run([sys.executable, "-m", "binarydm.sample", f"ckpt={run_dir / 'student'}", "num=2",
                          "label=10", f"out={tmp_path / 's2'}"], capture_output=True, text=True, env=ENV, cwd=ROOT,
                         timeout=300)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [
        "error: label=10: the model has 10 classes (0 to 9)"]


def test_sampling_takes_the_label(tmp_path):
    from binarydm.sampling import sample_images

    model = make_cond_unet(encoder_hid_dim_type="text_proj", encoder_hid_dim=10, in_channels=3, out_channels=3)
    a = sample_images(model, 2, steps=2, batch=2, labels=[3], progress=False)
    b = sample_images(model, 2, steps=2, batch=2, labels=[3], progress=False)
    c = sample_images(model, 2, steps=2, batch=2, labels=[7], progress=False)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_import_binarydm_registers_without_importing_diffusers_first(tmp_path):
    """`import binarydm` stays light (no diffusers, no Lightning); diffusers loaded later still finds the plug-in,
    and a config error of the training CLI is found before Lightning or diffusers are imported."""
    model, (x, t, kw), _ = binarized("unet2d", 0)
    model.save_pretrained(tmp_path / "m")
    torch.save(output(model, x, t, kw), tmp_path / "ref.pt")
    code = (
        "import sys, torch\n"
        "import binarydm\n"
        "from binarydm.training.config import load_config\n"
        "assert 'diffusers' not in sys.modules and 'lightning' not in sys.modules, 'heavy import'\n"
        "try:\n"
        "    load_config('tiny', ['optim.nope=1'])\n"
        "except Exception as e:\n"
        "    print('CONFIG', type(e).__name__)\n"
        "assert 'diffusers' not in sys.modules and 'lightning' not in sys.modules, 'heavy import after config'\n"
        "from diffusers import UNet2DModel\n"
        "m = UNet2DModel.from_pretrained(sys.argv[1]).eval()\n"
        "g = torch.Generator().manual_seed(1)\n"
        "x = torch.randn(2, 3, 8, 8, generator=g)\n"
        "with torch.no_grad():\n"
        "    print('EQUAL', torch.equal(m(x, torch.tensor([10, 700])).sample, torch.load(sys.argv[2])))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "m"), str(tmp_path / "ref.pt")],
                          capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "CONFIG ConfigError" in proc.stdout and "EQUAL True" in proc.stdout


def test_sample_grid_and_config_are_written_atomically(tmp_path, monkeypatch):
    from PIL import Image

    from binarydm.sampling import save_grid
    from binarydm.training.config import load_config, save_config

    path = save_grid(torch.zeros(4, 3, 8, 8, dtype=torch.uint8), tmp_path / "grid.png")
    before = path.read_bytes()

    def broken(image, fp, *args, **kwargs):
        Path(fp).write_bytes(b"half a png")
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", broken)
    with pytest.raises(OSError):
        save_grid(torch.full((4, 3, 8, 8), 255, dtype=torch.uint8), path)
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["grid.png"]
    cfg = load_config("tiny")
    save_config(cfg, tmp_path / "c" / "config.yaml")
    assert "max_steps: 6" in (tmp_path / "c" / "config.yaml").read_text()
    assert [p.name for p in (tmp_path / "c").iterdir()] == ["config.yaml"]


@pytest.mark.parametrize("config, overrides, message", [
    ("tiny_cond", ["data.labels=false"], "class-conditional (10 classes); set data.labels=true"),
    ("tiny_cond", ["model.config.encoder_hid_dim_type=null", "model.config.encoder_hid_dim=null"],
     "conditioned on text"),
    ("tiny", ["data.labels=true"], "takes no class labels"),
])
def test_condition_and_label_mismatches_fail_before_training(tmp_path, config, overrides, message):
    from binarydm.training.config import load_config
    from binarydm.training.validate import check_config

    with pytest.raises(UsageError, match=message.replace("(", r"\(").replace(")", r"\)")):
        check_config(load_config(config, [f"out_dir={tmp_path}", *overrides]))


def test_fashion_mnist_labels_are_read(tmp_path):
    from binarydm.training.data import FASHION_MNIST_DIR, DataConfig, build_dataset

    if not Path(FASHION_MNIST_DIR, "t10k-labels-idx1-ubyte").exists() and not Path(
            FASHION_MNIST_DIR, "t10k-labels-idx1-ubyte.gz").exists():
        pytest.skip("Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)")
    ds = build_dataset(DataConfig(name="fashion_mnist", root=FASHION_MNIST_DIR, channels=1, labels=True), train=False)
    image, label = ds[0]
    assert image.shape == (1, 32, 32) and int(label) == 9  # the test split starts with an ankle boot
    assert sorted(ds.labels.unique().tolist()) == list(range(10))


def test_sample_cli_reads_a_pipeline_directory(tmp_path):
    from diffusers import DDIMPipeline, DDIMScheduler

    from binarydm.sample import main as sample_main

    model, _, _ = binarized("unet2d")
    DDIMPipeline(unet=model, scheduler=DDIMScheduler(beta_end=0.03)).save_pretrained(tmp_path / "pipe")
    save_student_dir(model, None, None, tmp_path / "student",
                     scheduler_config=json.loads((tmp_path / "pipe" / "scheduler" / "scheduler_config.json").read_text()))
    for src in ("pipe", "student"):
        sample_main([f"ckpt={tmp_path / src}", "num=2", "steps=3", f"out={tmp_path / ('out_' + src)}"])
    for name in ("00000.png", "00001.png"):
        assert (tmp_path / "out_pipe" / "images" / name).read_bytes() == \
            (tmp_path / "out_student" / "images" / name).read_bytes()


def test_class_labels_through_num_class_embeds(tmp_path):
    """The other label path: a UNet2DModel with num_class_embeds gets class_labels (training and reload)."""
    from binarydm.training import load_config, run
    from binarydm.unets import condition_kwargs

    out = run(load_config("tiny", [f"out_dir={tmp_path}", "model.config.num_class_embeds=10", "data.labels=true",
                                   "trainer.max_steps=2", "sample.num_images=0"]))
    student = binarydm.load(out["student_dir"])
    x, t = torch.randn(2, 3, 8, 8), torch.tensor([10, 900])
    a = output(student, x, t, condition_kwargs(student.config, [1, 2]))
    assert set(condition_kwargs(student.config, [1, 2])) == {"class_labels"}
    assert torch.equal(a, output(out["module"].student.eval(), x, t, condition_kwargs(student.config, [1, 2])))
    assert not torch.equal(a, output(student, x, t, condition_kwargs(student.config, [3, 4])))


@pytest.mark.parametrize("name", binarydm.algorithms.available())
def test_every_algorithm_round_trips_through_diffusers(name, tmp_path):
    """Algorithms whose scales are sized at calibration (ReActNet's, FDA's, XNOR++'s, BiPFT's) included."""
    from diffusers import UNet2DModel

    model = make_tiny_unet()
    x, t = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0)), torch.tensor([3, 600])
    binarydm.binarize_(model, binarydm.algorithms.preset(name))
    binarydm.calibrate_(model, x, t)
    ref = output(model.eval(), x, t, {})
    model.save_pretrained(tmp_path)
    assert torch.equal(output(UNet2DModel.from_pretrained(tmp_path).eval(), x, t, {}), ref)
    assert torch.equal(output(binarydm.load(tmp_path), x, t, {}), ref)

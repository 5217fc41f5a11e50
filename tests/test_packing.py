"""The packed 1-bit checkpoint: bit layout, exact latent weights, bit-identical reload, clear errors."""

import json

import pytest
import torch

import binarydm
from binarydm.packing import (
    PackedFormatError,
    export_packed,
    file_sizes,
    load_packed,
    load_student_dir,
    pack_bits,
    packed_metadata,
    read_packed,
    save_student_dir,
    unpack_bits,
)
from binarydm.packing.bits import lmb_latent, lsq_latent
from binarydm.quant import LMB, LSQ, quant_layers, weight_quantizers
from conftest import make_tiny_unet


def trained_student(config="w1a4", steps=2, seed=0, **overrides):
    """A tiny binarized UNet after a few AdamW steps (so scales and steps are not at their init)."""
    model = make_tiny_unet(seed, **overrides)
    unet_config = dict(model.config)
    binarydm.binarize_(model, config)
    g = torch.Generator().manual_seed(seed + 1)
    x, t = torch.randn(4, 3, 8, 8, generator=g), torch.tensor([1, 250, 500, 999])
    binarydm.calibrate_(model, x, t)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(steps):
        loss = (model(x, t).sample - torch.randn(x.shape, generator=g)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval(), unet_config, (x, t)


@torch.no_grad()
def outputs(model, batch):
    return model(*batch).sample


def test_pack_bits_layout_lsb_first():
    # bit i of byte j holds element 8 j + i; True (+1) is a set bit; the tail is zero-padded.
    bits = torch.zeros(11, dtype=torch.bool)
    bits[0] = bits[3] = bits[8] = bits[10] = True
    assert pack_bits(bits).tolist() == [1 + 8, 1 + 4]
    r = torch.rand(3, 5, 7, generator=torch.Generator().manual_seed(0)) > 0.5
    packed = pack_bits(r)
    assert packed.dtype == torch.uint8 and packed.numel() == (r.numel() + 7) // 8
    assert torch.equal(unpack_bits(packed, r.numel()).view(r.shape), r)


@pytest.mark.parametrize("n_bases", [1, 2])
def test_lmb_latent_reproduces_every_sign_pattern(n_bases):
    g = torch.Generator().manual_seed(n_bases)
    w = torch.randn(6, 4, 3, 3, generator=g)
    w[0, 0, 0, 0] = 0.0  # sign(0) = +1
    q = LMB(6, 4, n_bases=n_bases).initialize_(w)
    with torch.no_grad():
        # Scales as training can leave them: a negative s1, a zero one, s2 larger than s1.
        q.s1[1] = -0.3
        q.s1[2] = 0.0
        q.s2.mul_(3.0) if n_bases == 2 else None
        w[3, 0, 0, 0] = q.s1[3, 0, 0, 0]  # on the boundary w = s1 of the second sign
        expected = q(w)
        b1 = w >= 0
        b2 = (w - q.s1 * torch.where(b1, 1.0, -1.0)) >= 0 if n_bases == 2 else None
        latent = lmb_latent(b1, b2, q.s1)
        assert torch.equal(q(latent), expected)


def test_lsq_latent_reproduces_codes():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(8, 3, 3, 3, generator=g) * 5
    q = LSQ(8, signed=True, channels=8, dim=4).initialize_(w)
    with torch.no_grad():
        q.step.mul_(torch.rand(q.step.shape, generator=g) + 0.5)
        codes = q.codes(w).to(torch.int8)
        assert torch.equal(q(lsq_latent(codes, q.step)), q(w))


@pytest.mark.parametrize("config", ["w1a4", "w1a32", "baseline", {"preset": "w1a4", "dual_levels": 2}, "xnor",
                                    "reactnet", "bidm"])
def test_export_load_is_bit_identical(tmp_path, config):
    model, unet_config, batch = trained_student(config)
    path = export_packed(model, unet_config, config, tmp_path / "m.safetensors")
    loaded = load_packed(path)
    assert torch.equal(outputs(loaded, batch), outputs(model, batch))
    # Learned scales and steps come from the file, not from a re-initialisation on the loaded weights.
    ref = dict(model.named_parameters())
    for name, p in loaded.named_parameters():
        if name.endswith((".s1", ".s2", ".step")):
            assert torch.equal(p, ref[name]), name


@pytest.mark.parametrize("config", ["xnor", "bidm"])
def test_xnor_family_weights_are_one_bit_plane_and_their_stored_scale(tmp_path, config):
    from binarydm.algorithms.xnor import XnorWeight

    model, unet_config, batch = trained_student(config)
    path = export_packed(model, unet_config, config, tmp_path / "m.safetensors")
    meta = packed_metadata(path)
    xnor = {name for name, kind in meta["layers"].items() if kind == "xnor"}
    expected = {name for name, layer in quant_layers(model) if isinstance(layer.weight_quantizer, XnorWeight)}
    assert xnor == expected and xnor
    tensors, _ = read_packed(path)
    for name in xnor:
        weight = model.get_submodule(name).weight
        assert f"{name}.weight" not in tensors
        assert tensors[f"{name}.weight.__bits0"].numel() == (weight.numel() + 7) // 8
        assert tensors[f"{name}.weight.__scale"].numel() == weight.shape[0]
    loaded = load_packed(path)
    for name in xnor:
        q, w = loaded.get_submodule(name).weight_quantizer, model.get_submodule(name).weight
        assert torch.equal(q.stored_scale, model.get_submodule(name).weight_quantizer.scale(w))
        assert torch.equal(torch.sign(loaded.get_submodule(name).weight), torch.sign(w))
    # Loaded and exported again: the same tensors (the stored scale is what a re-export writes).
    again, _ = read_packed(export_packed(loaded, unet_config, config, tmp_path / "again.safetensors"))
    assert again.keys() == tensors.keys() and all(torch.equal(again[k], tensors[k]) for k in tensors)


def test_export_layout_and_scales_moved_from_init(tmp_path):
    model, unet_config, batch = trained_student("w1a4")
    lmb = [q for q in weight_quantizers(model) if isinstance(q, LMB)]
    # Training moved s1 away from its initial value mean|w| (otherwise the test would prove little).
    moved = [not torch.allclose(q.s1, layer.weight.abs().mean(dim=tuple(range(1, layer.weight.dim())), keepdim=True))
             for _, layer in quant_layers(model) for q in [layer.weight_quantizer] if q in lmb]
    assert any(moved)
    path = export_packed(model, unet_config, "w1a4", tmp_path / "m.safetensors")
    meta = packed_metadata(path)
    kinds = set(meta["layers"].values())
    assert {"lmb2", "lsq8"} <= kinds and ("lmb1" in kinds or "lmb1z" in kinds)
    assert meta["format"] == "binarydm-packed" and meta["quant_config"]["a_bits"] == 4
    assert meta["unet_config"]["block_out_channels"] == [8, 16]
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:  # the container: one payload tensor, the index in the header
        assert set(f.keys()) == {"payload"} and f.get_tensor("payload").dtype == torch.uint8
    tensors, _ = read_packed(path)
    keys = set(tensors)
    for name, kind in meta["layers"].items():
        numel = model.get_submodule(name).weight.numel()
        assert f"{name}.weight" not in keys  # no latent float weight for a packed layer
        if kind.startswith("lmb"):
            planes = [k for k in keys if k.startswith(f"{name}.weight.__bits")]
            assert len(planes) == (2 if kind == "lmb2" else 1)
            assert all(tensors[k].numel() == (numel + 7) // 8 and tensors[k].dtype == torch.uint8 for k in planes)
        else:
            codes = tensors[f"{name}.weight.__codes"]
            assert codes.dtype == torch.int8 and codes.numel() == numel


def test_version_1_files_are_still_read(tmp_path):
    """Version 1 stored one safetensors tensor per name; such a file loads to the same model."""
    import json

    from safetensors.torch import save_file

    from binarydm.packing import packed as fmt

    model, unet_config, batch = trained_student("w1a4")
    v2 = export_packed(model, unet_config, "w1a4", tmp_path / "v2.safetensors")
    tensors, meta = read_packed(v2)
    meta = {**meta, "format_version": "1"}
    meta.pop("index")
    save_file(tensors, str(tmp_path / "v1.safetensors"), metadata=meta)
    assert json.loads(meta["layers"])  # read_packed hands back plain-JSON layers, as v1 stored them
    x, t = batch
    with torch.no_grad():
        assert torch.equal(load_packed(tmp_path / "v1.safetensors")(x, t).sample, load_packed(v2)(x, t).sample)
    assert fmt.FORMAT_VERSION == 2


def test_packed_file_is_close_to_theoretical_storage(tmp_path):
    # A wider tiny UNet so the bit-planes, not the header, dominate the file.
    model, unet_config, batch = trained_student("w1a4", steps=1, block_out_channels=(32, 64), norm_num_groups=8)
    path = export_packed(model, unet_config, "w1a4", tmp_path / "m.safetensors")
    theory = binarydm.summary(model, *batch)
    sizes = file_sizes(path)
    # Tensor payload: within 2 % of summary's count (which also ignores safetensors' alignment).
    assert abs(sizes["payload"] - theory.storage_bytes) / theory.storage_bytes < 0.02
    fp32_bytes = sum(t.numel() * 4 for t in make_tiny_unet(block_out_channels=(32, 64), norm_num_groups=8)
                     .state_dict().values())
    assert sizes["payload"] < fp32_bytes / 10


def test_ebb_dropped_basis_round_trips(tmp_path):
    model, unet_config, batch = trained_student("w1a4")
    two = [q for q in weight_quantizers(model) if isinstance(q, LMB) and q.n_bases == 2]
    two[0].drop_second_basis_()
    path = export_packed(model, unet_config, "w1a4", tmp_path / "m.safetensors")
    loaded = load_packed(path)
    assert torch.equal(outputs(loaded, batch), outputs(model, batch))


def test_load_leaves_global_rng_alone(tmp_path):
    model, unet_config, _ = trained_student()
    path = export_packed(model, unet_config, "w1a4", tmp_path / "m.safetensors")
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    load_packed(path)
    assert torch.equal(torch.rand(3), expected)


def test_truncated_file_names_the_file(tmp_path):
    model, unet_config, _ = trained_student()
    path = export_packed(model, unet_config, "w1a4", tmp_path / "trunc.safetensors")
    data = path.read_bytes()
    for cut in (len(data) // 2, 100, 4):
        path.write_bytes(data[:cut])
        with pytest.raises(PackedFormatError, match="trunc.safetensors"):
            load_packed(path)


def test_corrupted_payload_names_the_file(tmp_path):
    model, unet_config, _ = trained_student()
    path = export_packed(model, unet_config, "w1a4", tmp_path / "bad.safetensors")
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF  # one byte of tensor data: the header still parses
    path.write_bytes(bytes(data))
    with pytest.raises(PackedFormatError, match="bad.safetensors.*checksum"):
        load_packed(path)


def test_other_safetensors_file_is_refused(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(3)}, str(path))
    with pytest.raises(PackedFormatError, match="plain.safetensors.*not a binarydm packed"):
        load_packed(path)


def test_wrong_architecture_names_the_file(tmp_path):
    model, unet_config, _ = trained_student()
    path = export_packed(model, unet_config, "w1a4", tmp_path / "small.safetensors")
    other = binarydm.binarize_(make_tiny_unet(block_out_channels=(16, 32)), "w1a4")
    with pytest.raises(PackedFormatError, match="small.safetensors.*architecture"):
        load_packed(path, model=other)
    # Same UNet, another QuantConfig (kept layers left in float: no quantizers there).
    other = binarydm.binarize_(make_tiny_unet(), {"preset": "w1a4", "keep_bits": 32})
    with pytest.raises(PackedFormatError, match="small.safetensors.*architecture"):
        load_packed(path, model=other)


def test_student_dir_round_trip_and_wrong_architecture(tmp_path):
    model, unet_config, batch = trained_student()
    save_student_dir(model, unet_config, "w1a4", tmp_path / "student")
    loaded, configs = load_student_dir(tmp_path / "student")
    assert torch.equal(outputs(loaded, batch), outputs(model, batch))
    assert configs["quant_config"]["weight"] == "lmb"
    # A config.json that does not describe the saved weights.
    cfg = json.loads((tmp_path / "student" / "config.json").read_text())
    cfg["block_out_channels"] = [16, 32]
    (tmp_path / "student" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(PackedFormatError, match="diffusion_pytorch_model.safetensors.*architecture"):
        load_student_dir(tmp_path / "student")


def test_export_cli_reports_size_and_ratio(tmp_path, capsys):
    from binarydm.export import main

    model, unet_config, batch = trained_student()
    save_student_dir(model, unet_config, "w1a4", tmp_path / "run" / "student",
                     scheduler_config={"num_train_timesteps": 1000, "beta_schedule": "linear"})
    out = tmp_path / "packed.safetensors"
    main([f"ckpt={tmp_path / 'run'}", f"out={out}", "verify=true"])
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["bytes"] == out.stat().st_size
    fp32 = sum(t.numel() * 4 for t in make_tiny_unet().state_dict().values())
    assert report["fp32_bytes"] == fp32 and report["ratio"] == pytest.approx(fp32 / report["bytes"])
    assert report["verified_equal"] is True
    assert packed_metadata(out)["scheduler_config"]["num_train_timesteps"] == 1000
    assert torch.equal(outputs(load_packed(out), batch), outputs(model, batch))


def test_runner_layout_and_fp_diffusers_dir_load(tmp_path):
    """The training runner's spelling (model.safetensors + config.json) and a plain FP diffusers directory."""
    from safetensors.torch import save_file

    from binarydm.packing import load_checkpoint

    model, unet_config, batch = trained_student()
    d = tmp_path / "run" / "student"
    d.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(d / "model.safetensors"))
    (d / "config.json").write_text(json.dumps({k: list(v) if isinstance(v, tuple) else v
                                               for k, v in unet_config.items()}))
    (d / "quant_config.json").write_text(json.dumps(binarydm.QuantConfig.preset("w1a4").to_dict()))
    loaded, configs = load_checkpoint(d)
    assert torch.equal(outputs(loaded, batch), outputs(model, batch))

    teacher = make_tiny_unet(seed=3)
    teacher.save_pretrained(tmp_path / "teacher")
    fp, configs = load_checkpoint(tmp_path / "teacher")
    assert configs["quant_config"] is None
    assert torch.equal(outputs(fp, batch), outputs(teacher.eval(), batch))
    with pytest.raises(FileNotFoundError, match="not a binarydm student directory"):
        load_checkpoint(tmp_path)

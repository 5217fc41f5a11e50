"""Latent diffusion and text-to-image (issue 27) on tiny pipelines the tests build: the latent cache, latent
and text training, caption dropout, classifier-free guidance, pipeline export, and the refusals."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import binarydm
from binarydm.errors import UsageError
from binarydm.latent.cache import build_cache, open_cache
from binarydm.latent.components import decode_latents, encode_images, load_components
from binarydm.latent.text import build_tokenizer, class_captions, embed_prompts, folder_captions
from binarydm.training import load_config
from binarydm.training.data import LatentImages, StepBatchSampler
from conftest import make_tiny_unet
from latent_helpers import IMAGE_SIZE, latent_run_values, make_autoencoder, make_clip, make_pipeline


# ---- the cache ---------------------------------------------------------------------------------------------
def _images(n=10, seed=0):
    return torch.rand(n, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(seed)) * 2 - 1


@pytest.mark.parametrize("kind", ["kl", "vq"])
def test_cache_holds_the_scaled_latents_and_reads_back_bit_exact(tmp_path, kind):
    ae, x = make_autoencoder(kind), _images()
    key = {"autoencoder": kind, "images": "ten"}
    cache = build_cache(tmp_path / "c", key, len(x), lambda a, b: x[a:b], ae, views=2, chunk=4, progress=False)
    expected = encode_images(ae, x).numpy().astype(np.float16)
    assert np.array_equal(cache.latents[0], expected)
    assert np.array_equal(cache.latents[1], encode_images(ae, x.flip(-1)).numpy().astype(np.float16))
    # The scaling factor is applied: the cached latents are the raw ones times scaling_factor.
    raw = encode_images(ae, x, scale=False)
    assert torch.allclose(torch.from_numpy(expected).float(), raw * ae.config.scaling_factor, atol=2e-3, rtol=1e-3)
    again = open_cache(tmp_path / "c", key)
    assert again is not None and np.array_equal(np.asarray(again.latents), np.asarray(cache.latents))
    assert again.latents.dtype == np.float16 and isinstance(again.latents, np.memmap)
    # Decoding the latents gives the autoencoder's reconstruction (the pipelines decode the same way).
    assert torch.allclose(decode_latents(ae, torch.from_numpy(expected).float()[:2]),
                          ae.decode(raw[:2]).sample.clamp(-1, 1) if kind == "kl" else
                          ae.decode(raw[:2]).sample.clamp(-1, 1), atol=5e-3)


def test_cache_of_other_data_or_another_autoencoder_is_refused_in_one_line(tmp_path):
    ae, x = make_autoencoder("kl"), _images()
    build_cache(tmp_path / "c", {"autoencoder": "a", "images": "x"}, len(x), lambda a, b: x[a:b], ae, progress=False)
    with pytest.raises(UsageError, match=r"differs in: autoencoder weights/config\); delete it") as err:
        open_cache(tmp_path / "c", {"autoencoder": "b", "images": "x"})
    assert "\n" not in str(err.value)
    with pytest.raises(UsageError, match="differs in: images"):
        build_cache(tmp_path / "c", {"autoencoder": "a", "images": "y"}, len(x), lambda a, b: x[a:b], ae,
                    progress=False)
    (tmp_path / "c" / "latents.npy").write_bytes(b"\x93NUMPY damaged")
    with pytest.raises(UsageError, match="damaged latent cache"):
        open_cache(tmp_path / "c", {"autoencoder": "a", "images": "x"})


def test_a_killed_cache_build_resumes_where_it_stopped(tmp_path):
    ae, x = make_autoencoder("vq"), _images(12)
    key = {"k": 1}
    asked = []

    def dying(a, b):
        asked.append(a)
        if a >= 8:
            raise KeyboardInterrupt  # the kill, after two chunks of four were written
        return x[a:b]

    with pytest.raises(KeyboardInterrupt):
        build_cache(tmp_path / "c", key, 12, dying, ae, chunk=4, progress=False)
    assert open_cache(tmp_path / "c", key) is None  # not complete: nothing to read yet
    assert json.loads((tmp_path / "c" / "progress.json").read_text()) == {"rows": 8}
    asked.clear()
    cache = build_cache(tmp_path / "c", key, 12, lambda a, b: (asked.append(a), x[a:b])[1], ae, chunk=4,
                        progress=False)
    assert asked == [0, 8]  # the probe image, then only the missing chunk
    fresh = build_cache(tmp_path / "fresh", key, 12, lambda a, b: x[a:b], ae, chunk=4, progress=False)
    assert np.array_equal(np.asarray(cache.latents), np.asarray(fresh.latents))
    assert not (tmp_path / "c" / "progress.json").exists() and not (tmp_path / "c" / "latents.partial.npy").exists()


# ---- text ----------------------------------------------------------------------------------------------------
def test_tokenizer_learnt_from_captions_keeps_words_whole_and_reads_any_text():
    tok = build_tokenizer(["a photo of a sneaker", "a black and white picture of an ankle boot"], max_length=12)
    tokens = tok.convert_ids_to_tokens(tok("A photo of an ankle boot").input_ids)
    assert tokens == ["<|startoftext|>", "a</w>", "photo</w>", "of</w>", "an</w>", "ankle</w>", "boot</w>",
                      "<|endoftext|>"]
    unseen = tok.convert_ids_to_tokens(tok("zebra!").input_ids)
    assert tok.unk_token_id not in tok("zebra!").input_ids[1:-1] and "".join(unseen[1:-1]) == "zebra</w>!</w>"


def test_prompt_embeddings_equal_the_stable_diffusion_pipelines_own(tmp_path):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(make_pipeline(tmp_path / "sd", "sd"))
    prompts = ["a photo of a pattern 3", "", "a pattern 7 on a black background"]
    ours = embed_prompts(pipe.text_encoder, pipe.tokenizer, prompts)
    theirs = pipe.encode_prompt(prompts, "cpu", 1, False)[0]
    assert torch.equal(ours, theirs)


def test_captions_from_class_names_and_from_a_folder(tmp_path):
    caps = class_captions([0, 9, 9], ["a cat", "an owl"] + ["x"] * 7 + ["an ankle boot"], seed=0)
    assert all("ankle boot" in c for c in caps[1:]) and "cat" in caps[0]
    assert class_captions([0] * 50, ["a cat"] * 10, seed=0) != class_captions([0] * 50, ["a cat"] * 10, seed=1)
    (tmp_path / "sub").mkdir()
    paths = [tmp_path / "a.png", tmp_path / "sub" / "b.png"]
    (tmp_path / "metadata.jsonl").write_text('{"file_name": "a.png", "text": "one"}\n\n'
                                             '{"file_name": "sub/b.png", "text": "two"}\n')
    assert folder_captions(tmp_path, paths) == ["one", "two"]
    (tmp_path / "metadata.jsonl").unlink()
    (tmp_path / "a.txt").write_text("first\n")
    with pytest.raises(UsageError, match=r"b.png: no caption: .* metadata.jsonl"):
        folder_captions(tmp_path, paths)


def test_caption_dropout_drops_the_asked_fraction_and_serves_the_empty_caption(tmp_path):
    sampler = StepBatchSampler(1000, 100, seed=0, random_flip=True, drop_rate=0.25)
    drops = [d for k in range(10) for _, _, d in sampler.batch(k)]
    assert 0.2 < np.mean(drops) < 0.3
    # Dropping draws after the flips: the permutation and flips of a run without dropout are unchanged.
    plain = StepBatchSampler(1000, 100, seed=0, random_flip=True)
    assert [(i, f) for i, f, _ in sampler.batch(3)] == [(i, f) for i, f, _ in plain.batch(3)]
    encoder, tokenizer = make_clip()
    ae, x = make_autoencoder("kl"), _images(6)
    captions = ["a pattern 1", "a pattern 2", "", "a pattern 1", "a pattern 5", "a pattern 2"]
    cache = build_cache(tmp_path / "c", {"k": 1}, 6, lambda a, b: x[a:b], ae, captions=captions,
                        text_encoder=encoder, tokenizer=tokenizer, progress=False)
    data = LatentImages(cache, text=True)
    empty, first = embed_prompts(encoder, tokenizer, ["", "a pattern 1"])
    z, e = data[(0, False, False)]
    assert z.shape == (4, 8, 8) and torch.allclose(e, first, atol=2e-3)
    assert torch.allclose(data[(0, False, True)][1], empty, atol=2e-3)
    assert [cache.caption(i) for i in range(6)] == captions


# ---- training ---------------------------------------------------------------------------------------------
def _run(values):
    from binarydm.training.runner import run

    return run(load_config(None, values=values))


def _refuse_autoencoder(monkeypatch, cls_name):
    """After the cache is built, any autoencoder forward fails: a training step must not need one."""
    import diffusers

    cls = getattr(diffusers, cls_name)

    def forbidden(self, *a, **k):
        raise AssertionError("a training step ran the autoencoder")

    return lambda: (monkeypatch.setattr(cls, "encode", forbidden), monkeypatch.setattr(cls, "decode", forbidden))


@pytest.mark.parametrize("kind", ["ldm", "sd"])
def test_latent_training_runs_no_autoencoder_per_step_and_exports_a_pipeline(tmp_path, monkeypatch, kind):
    from binarydm.training.runner import make_trainer, prepare

    pipe = make_pipeline(tmp_path / "pipe", kind)
    extra = {"data.caption_dropout": 0.3, "sample.guidance_scale": 2.0} if kind == "sd" else {}
    # No sample grid: sampling decodes (as it must); the steps and the validation loss must not.
    cfg = load_config(None, values=latent_run_values(pipe, tmp_path / "runs", **extra, **{"sample.num_images": 0}))
    built, trainer = prepare(cfg)  # builds the cache
    assert tuple(built.data.train_set[(0, True, False)][0].shape if kind == "sd" else
                 built.data.train_set[(0, True, False)].shape) == (4, 8, 8)
    _refuse_autoencoder(monkeypatch, "VQModel" if kind == "ldm" else "AutoencoderKL")()
    trainer = make_trainer(cfg, built)
    trainer.fit(built.module, datamodule=built.data)
    assert trainer.global_step == 3
    monkeypatch.undo()
    out = _run(latent_run_values(pipe, tmp_path / "runs", name="full", **extra))
    student = out["student_dir"]
    index = json.loads((student / "model_index.json").read_text())
    assert index["_class_name"] == ("LDMPipeline" if kind == "ldm" else "StableDiffusionPipeline")
    # The frozen components are the source's, byte for byte.
    slot = "vqvae" if kind == "ldm" else "vae"
    for sub in [slot] + (["text_encoder", "tokenizer"] if kind == "sd" else []):
        for f in (pipe / sub).iterdir():
            assert (student / sub / f.name).read_bytes() == f.read_bytes(), f"{sub}/{f.name}"
    assert "latent pipeline:" in out["report"].read_text()


@pytest.mark.parametrize("kind", ["ldm", "sd"])
def test_exported_pipeline_round_trips_bit_exact_through_diffusers_and_binarydm_load(tmp_path, kind):
    from diffusers import DiffusionPipeline

    pipe = make_pipeline(tmp_path / "pipe", kind)
    out = _run(latent_run_values(pipe, tmp_path / "runs"))
    trained = out["module"].student.eval()
    loaded = DiffusionPipeline.from_pretrained(out["student_dir"])
    ours = binarydm.load(out["student_dir"])
    z, t = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0)), torch.tensor([10, 900])
    cond = {"encoder_hidden_states": torch.randn(2, 16, 16)} if kind == "sd" else {}
    with torch.no_grad():
        expected = trained(z, t, **cond).sample
        assert torch.equal(loaded.unet(z, t, **cond).sample, expected)
        assert torch.equal(ours.unet(z, t, **cond).sample, expected)
    assert loaded.unet.config.quantization_config["quant_method"] == "binarydm"


def test_class_conditional_latent_unet_trains_on_labelled_latents(tmp_path):
    unet = make_tiny_unet(0, in_channels=4, out_channels=4, num_class_embeds=10)
    pipe = make_pipeline(tmp_path / "pipe", "ldm", unet=unet)
    out = _run(latent_run_values(pipe, tmp_path / "runs", **{"data.labels": True}))
    assert out["trainer"].global_step == 3
    z, label = out["built"].data.train_set[(1, False, False)]
    assert z.shape == (4, 8, 8) and int(label) == 1
    from binarydm.sample import main

    main([f"ckpt={out['student_dir']}", "num=2", "steps=2", "label=3", f"out={tmp_path / 's'}"])
    info = json.loads((tmp_path / "s" / "sample_info.json").read_text())
    assert info["complete"] and info["label"] == 3 and (tmp_path / "s" / "images" / "00001.png").is_file()


def test_classifier_free_guidance_changes_text_samples_and_matches_the_pipeline(tmp_path):
    from diffusers import StableDiffusionPipeline

    from binarydm.sampling import sample_images

    pipe = StableDiffusionPipeline.from_pretrained(make_pipeline(tmp_path / "sd", "sd"))
    parts = load_components(str(tmp_path / "sd"), dict(pipe.unet.config))
    args = dict(num=2, steps=3, batch=2, seed=4, scheduler_config=dict(pipe.scheduler.config), progress=False,
                components=parts, prompts=["a pattern 1", "a pattern 2"])
    one = sample_images(pipe.unet, guidance_scale=1.0, **args)
    three = sample_images(pipe.unet, guidance_scale=3.0, **args)
    assert one.shape == (2, 3, IMAGE_SIZE, IMAGE_SIZE) and not torch.equal(one, three)
    # The same images as diffusers' own pipeline with the same scheduler, seed and prompts.
    from binarydm.sampling import scheduler_for

    pipe.scheduler = scheduler_for("ddim", dict(pipe.scheduler.config))
    pipe.set_progress_bar_config(disable=True)
    direct = pipe(["a pattern 1", "a pattern 2"], num_inference_steps=3, guidance_scale=3.0, eta=0.0,
                  generator=torch.Generator().manual_seed(4), output_type="np").images
    assert torch.equal(torch.from_numpy(np.round(direct * 255).astype(np.uint8)).permute(0, 3, 1, 2), three)


# ---- refusals --------------------------------------------------------------------------------------------------
def _refused(values, match, tmp_path):
    with pytest.raises(UsageError, match=match) as err:
        _run(values)
    assert "\n" not in str(err.value)
    assert not (Path(values["out_dir"]) / values["name"]).exists()  # nothing written


@pytest.mark.parametrize("kind", ["ldm", "sd"])
def test_the_unet_folder_of_a_latent_pipeline_is_never_trained_on_pixels(tmp_path, kind):
    pipe = make_pipeline(tmp_path / "pipe", kind)
    values = latent_run_values(pipe / "unet", tmp_path / "runs")
    _refused(values, r"is the unet/ of the latent pipeline .*: point model.pretrained at", tmp_path)


def test_a_pixel_pipeline_trains_on_pixels(tmp_path):
    from diffusers import DDPMPipeline, DDPMScheduler

    from binarydm.training.runner import prepare

    DDPMPipeline(unet=make_tiny_unet(), scheduler=DDPMScheduler()).save_pretrained(tmp_path / "ddpm")
    values = latent_run_values(tmp_path / "ddpm", tmp_path / "runs", **{"data.image_size": 8})
    built, _ = prepare(load_config(None, values=values))
    assert not built.components.latent and built.data.train_set[0].shape == (3, 8, 8)  # images, no cache


def test_a_pixel_unet_is_never_trained_on_latents(tmp_path):
    unet = make_tiny_unet()  # 3 channels in and out: an image UNet
    unet.save_pretrained(tmp_path / "pixel")
    values = latent_run_values(tmp_path / "pixel", tmp_path / "runs",
                               **{"model.autoencoder": str(make_pipeline(tmp_path / "pipe", "ldm"))})
    _refused(values, r"in_channels=3 does not match the autoencoder's 4 latent channels", tmp_path)


def test_latent_size_and_channel_mismatches_are_refused(tmp_path):
    pipe = make_pipeline(tmp_path / "pipe", "ldm")
    _refused(latent_run_values(pipe, tmp_path / "runs", **{"data.image_size": 32}),
             r"data.image_size=32 does not match the latent pipeline: .* set data.image_size=16", tmp_path)
    _refused(latent_run_values(pipe, tmp_path / "runs", **{"data.channels": 1}),
             r"data.channels=1 does not match the autoencoder's in_channels=3", tmp_path)


def test_a_text_model_needs_captions_and_a_text_encoder_and_an_autoencoder(tmp_path):
    from binarydm.sampling import save_images

    pipe = make_pipeline(tmp_path / "pipe", "sd")
    folder = tmp_path / "folder"
    save_images(torch.randint(0, 255, (6, 3, IMAGE_SIZE, IMAGE_SIZE), dtype=torch.uint8), folder, grid=0)
    values = latent_run_values(pipe, tmp_path / "runs", **{"data.name": "folder", "data.root": str(folder / "images")})
    _refused(values, r"00000.png: no caption: a text-conditioned UNet needs metadata.jsonl", tmp_path)
    no_text = tmp_path / "no_text"
    shutil.copytree(pipe, no_text)
    index = json.loads((no_text / "model_index.json").read_text())
    del index["text_encoder"], index["tokenizer"]
    (no_text / "model_index.json").write_text(json.dumps(index))
    _refused(latent_run_values(no_text, tmp_path / "runs"), r"conditioned on text .* needs its text encoder",
             tmp_path)
    no_vae = tmp_path / "no_vae"
    shutil.copytree(pipe, no_vae)
    index = json.loads((no_vae / "model_index.json").read_text())
    del index["vae"]
    (no_vae / "model_index.json").write_text(json.dumps(index))
    _refused(latent_run_values(no_vae, tmp_path / "runs"), r"needs an AutoencoderKL \(vae/\) too", tmp_path)


def test_a_captioned_folder_trains_a_text_model(tmp_path):
    from binarydm.sampling import save_images

    pipe = make_pipeline(tmp_path / "pipe", "sd")
    folder = tmp_path / "folder"
    save_images(torch.randint(0, 255, (6, 3, IMAGE_SIZE, IMAGE_SIZE), dtype=torch.uint8), folder, grid=0)
    lines = [json.dumps({"file_name": f"{i:05d}.png", "text": f"a pattern {i % 3}"}) for i in range(6)]
    (folder / "images" / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    out = _run(latent_run_values(pipe, tmp_path / "runs", **{"data.name": "folder",
                                                              "data.root": str(folder / "images")}))
    assert out["trainer"].global_step == 3
    assert out["built"].data.train_set.cache.caption(4) == "a pattern 1"


def test_train_cli_refuses_a_text_model_with_an_uncaptioned_folder_with_exit_2(tmp_path, capsys):
    from binarydm.sampling import save_images
    from binarydm.train import main

    pipe = make_pipeline(tmp_path / "pipe", "sd")
    folder = tmp_path / "folder"
    save_images(torch.randint(0, 255, (6, 3, IMAGE_SIZE, IMAGE_SIZE), dtype=torch.uint8), folder, grid=0)
    values = latent_run_values(pipe, tmp_path / "runs", **{"data.name": "folder", "data.root": str(folder / "images")})
    argv = [f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in values.items()]
    capsys.readouterr()  # what building the pipeline printed
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "no caption" in err[0]


# ---- sampling, FID and export of a trained latent pipeline ----------------------------------------------------
@pytest.fixture(scope="module")
def sd_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("sd_run")
    pipe = make_pipeline(root / "pipe", "sd")
    out = _run(latent_run_values(pipe, root / "runs", **{"eval.packed": True}))
    return out


def test_sample_cli_prompts_a_text_pipeline_and_refuses_what_it_cannot_sample(sd_run, tmp_path, capsys):
    from binarydm.sample import main

    student = sd_run["student_dir"]
    main([f"ckpt={student}", "num=3", "steps=2", "batch=2", 'prompt=["a pattern 1","a pattern 4"]',
          "guidance_scale=3", f"out={tmp_path / 'a'}"])
    assert sorted(p.name for p in (tmp_path / "a" / "images").iterdir()) == ["00000.png", "00001.png", "00002.png"]
    info = json.loads((tmp_path / "a" / "sample_info.json").read_text())
    assert info["complete"] and info["guidance_scale"] == 3
    packed = sd_run["run_dir"] / "student.packed.safetensors"
    bad = [([f"ckpt={student}", f"out={tmp_path / 'b'}"], "give prompt="),
           ([f"ckpt={packed}", 'prompt="a pattern 1"', f"out={tmp_path / 'c'}"],
            "the UNet of a latent pipeline (StableDiffusionPipeline)"),
           ([f"ckpt={student}", 'prompt="a pattern 1"', "guidance_scale=0.5", f"out={tmp_path / 'd'}"],
            "guidance_scale=0.5: must be a number >= 1")]
    for argv, message in bad:
        capsys.readouterr()
        with pytest.raises(SystemExit) as code:
            main(argv)
        err = capsys.readouterr().err.strip().splitlines()
        assert code.value.code == 2 and len(err) == 1 and message in err[0], err
    # The packed UNet samples with the pipeline that holds its frozen parts.
    main([f"ckpt={packed}", f"pipeline={student}", "num=2", "steps=2", "batch=2", 'prompt="a pattern 1"',
          f"out={tmp_path / 'e'}"])
    assert (tmp_path / "e" / "grid.png").is_file()


def test_packed_unet_of_an_unconditional_latent_pipeline_is_not_sampled_as_images(tmp_path, capsys):
    from binarydm.packing.export import export
    from binarydm.sample import main

    pipe = make_pipeline(tmp_path / "pipe", "ldm")
    out = _run(latent_run_values(pipe, tmp_path / "runs"))
    packed = tmp_path / "unet.packed.safetensors"
    export(out["student_dir"], packed)
    with pytest.raises(SystemExit) as code:
        main([f"ckpt={packed}", f"out={tmp_path / 's'}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code.value.code == 2 and "UNet of a latent pipeline (LDMPipeline)" in err[-1]
    main([f"ckpt={packed}", f"pipeline={out['student_dir']}", "num=2", "steps=2", f"out={tmp_path / 's'}"])
    from PIL import Image

    assert Image.open(tmp_path / "s" / "images" / "00000.png").size == (IMAGE_SIZE, IMAGE_SIZE)  # decoded


def test_latent_run_report_scores_decoded_samples_of_teacher_and_student(tmp_path):
    from binarydm.sampling import save_images

    ref = tmp_path / "ref"
    save_images(torch.randint(0, 255, (8, 3, IMAGE_SIZE, IMAGE_SIZE), dtype=torch.uint8,
                              generator=torch.Generator().manual_seed(1)), ref, grid=0)
    pipe = make_pipeline(tmp_path / "pipe", "ldm")
    out = _run(latent_run_values(pipe, tmp_path / "runs", **{"eval.fid_samples": 4, "eval.features": "tiny",
                                                              "eval.reference": str(ref / "images"),
                                                              "eval.sample_steps": 2}))
    fid = out["evaluation"]["fid"]
    assert set(fid) == {"teacher", "student"} and all(np.isfinite(v["fid"]) for v in fid.values())
    from PIL import Image

    sample = Image.open(out["run_dir"] / "eval" / "student" / "images" / "00000.png")
    assert sample.size == (IMAGE_SIZE, IMAGE_SIZE) and sample.mode == "RGB"  # decoded images, not 8x8 latents
    assert "teacher_vs_student.png" in out["report"].read_text()


# ---- the configs for users with the network --------------------------------------------------------------------
@pytest.mark.parametrize("name, hub", [("ldm_celebahq", "CompVis/ldm-celebahq-256"),
                                       ("sd15", "stable-diffusion-v1-5/stable-diffusion-v1-5")])
def test_hub_configs_fail_offline_in_one_line_naming_the_hub_id_and_a_local_copy(tmp_path, capsys, name, hub):
    from binarydm.sampling import save_images
    from binarydm.train import main

    save_images(torch.randint(0, 255, (4, 3, 8, 8), dtype=torch.uint8), tmp_path / "data", grid=0)
    assert main([f"config={name}", f"data.root={tmp_path / 'data' / 'images'}", f"out_dir={tmp_path / 'runs'}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and hub in err[0] and f"huggingface-cli download {hub} --local-dir DIR" in err[0], err
    assert "model.pretrained=DIR" in err[0] and not (tmp_path / "runs").exists()


def test_gradient_checkpointing_gives_the_plain_steps_loss_and_gradients():
    from diffusers import DDPMScheduler

    from binarydm.training.module import DiffusionQAT

    losses, grads = [], []
    for checkpointing in (False, True):
        student, teacher = make_tiny_unet(0), make_tiny_unet(0)
        binarydm.binarize_(student, "w1a4")
        binarydm.calibrate_(student, torch.randn(4, 3, 8, 8), torch.tensor([1, 2, 3, 4]))
        if checkpointing:
            student.enable_gradient_checkpointing()
        module = DiffusionQAT(student.train(), DDPMScheduler(), teacher)
        x_t, t, eps = module.noisy_inputs(torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(0)),
                                          module.step_generator(0))
        loss = module.compute_losses(x_t, t, eps)["loss"]
        loss.backward()
        losses.append(loss.detach())
        grads.append(torch.cat([p.grad.reshape(-1) for p in student.parameters() if p.grad is not None]))
    assert torch.equal(losses[0], losses[1]) and torch.allclose(grads[0], grads[1], rtol=1e-5, atol=1e-7)


# ---- autoencoder runs ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["AutoencoderKL", "VQModel"])
def test_an_autoencoder_run_trains_and_exports_unit_variance_latents(tmp_path, kind):
    from diffusers import AutoencoderKL, VQModel

    config = {"_class_name": kind, "in_channels": 3, "out_channels": 3, "latent_channels": 4,
              "down_block_types": ["DownEncoderBlock2D"] * 2, "up_block_types": ["UpDecoderBlock2D"] * 2,
              "block_out_channels": [8, 8], "layers_per_block": 1, "norm_num_groups": 4, "sample_size": IMAGE_SIZE}
    if kind == "VQModel":
        config.update(num_vq_embeddings=16, vq_embed_dim=4)
    values = {"name": "ae", "out_dir": str(tmp_path), "quant": "none", "model.pretrained": None,
              "model.config": config, "data.name": "synthetic", "data.image_size": IMAGE_SIZE,
              "data.batch_size": 4, "data.num_workers": 0, "data.val_size": 4, "data.synthetic_size": 12,
              "optim.lr": 1e-3, "optim.schedule": "constant", "autoencoder.scale_images": 8,
              "trainer.accelerator": "cpu", "trainer.max_steps": 4, "trainer.val_check_interval": 2,
              "trainer.limit_val_batches": 1, "trainer.checkpoint_every_n_steps": 2, "trainer.log_every_n_steps": 1,
              "trainer.enable_progress_bar": False}
    out = _run(values)
    losses = [float(r["train/l1"]) for r in __import__("csv").DictReader(
        open(next((tmp_path / "ae" / "csv").glob("version_*/metrics.csv")))) if r.get("train/l1")]
    assert len(losses) == 4 and all(np.isfinite(losses))
    ae = (VQModel if kind == "VQModel" else AutoencoderKL).from_pretrained(out["student_dir"])
    images = out["built"].data.train_set
    x = torch.stack([images[i] for i in range(8)])
    z = encode_images(ae, x)
    assert abs(float(z.std()) - 1.0) < 1e-3  # scaling_factor = 1 / std of these very latents
    report = out["report"].read_text()
    assert "scaling_factor = 1 / std of the latents of 8 training images" in report
    assert (tmp_path / "ae" / "samples" / "step_0000004.png").is_file()  # originals above reconstructions
    # An autoencoder is never binarized.
    values.update(quant="w1a4", name="ae2")
    with pytest.raises(UsageError, match="an autoencoder is trained in full precision .* set quant=none"):
        _run(values)


def test_fid_command_samples_a_text_pipeline_with_prompts_and_guidance(sd_run, tmp_path):
    from binarydm.fid import main
    from binarydm.sampling import save_images

    save_images(torch.randint(0, 255, (6, 3, IMAGE_SIZE, IMAGE_SIZE), dtype=torch.uint8), tmp_path / "ref", grid=0)
    main([f"gen={sd_run['student_dir']}", f"ref={tmp_path / 'ref' / 'images'}", "num=4", "ref_num=4", "steps=2",
          "batch=4", 'prompt=["a pattern 1","a pattern 2"]', "guidance_scale=2", "extractor=tiny",
          "backend=cleanfid", f"out={tmp_path / 'gen'}", f"json={tmp_path / 'fid.json'}"])
    result = json.loads((tmp_path / "fid.json").read_text())
    assert np.isfinite(result["fid_cleanfid"]) and result["num_fake"] == 4
    assert json.loads((tmp_path / "gen" / "sample_info.json").read_text())["guidance_scale"] == 2

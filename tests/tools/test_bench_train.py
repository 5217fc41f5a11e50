"""tools/bench_train.py: the QAT-vs-FP step benchmark, here on a tiny text-conditioned UNet (the code path of
``--unet sd15`` on a GPU) with gradient checkpointing and JSON output."""

import json

import bench_train


def test_text_conditioned_unet_with_checkpointing_writes_its_figures(tmp_path, capsys):
    out = tmp_path / "bench.json"
    bench_train.main(["--unet", "cond-tiny", "--batch", "2", "--steps", "1", "--threads", "1",
                      "--gradient-checkpointing", "--json", str(out)])
    figures = json.loads(out.read_text())
    r = figures["unets"]["cond-tiny"]
    assert figures["gradient_checkpointing"] and figures["batch"] == 2
    for loop in ("fp", "qat", "student"):
        assert r[loop] > 0 and abs(r[f"images_per_s_{loop}"] - 2 / (r[loop] / 1000)) < 1e-6
    assert "ratio QAT / FP" in capsys.readouterr().out


def test_sd15_is_stable_diffusion_15s_unet():
    from binarydm.unets import build_unet

    config = bench_train.unet_config("sd15")
    assert (config["block_out_channels"], config["cross_attention_dim"], config["sample_size"]) == \
        ([320, 640, 1280, 1280], 768, 64)
    with __import__("torch").device("meta"):  # 860M parameters: count them without allocating
        unet = build_unet(config)
    assert 855e6 < sum(p.numel() for p in unet.parameters()) < 865e6

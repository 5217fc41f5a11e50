"""The comparison suite end to end (smoke suite, synthetic data, CPU) and its pieces."""

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from binarydm import algorithms
from suite import suites, tracks
from suite.tasks.base import FP, RunResult, RunSpec


def _result(metric, higher=True, wall=1.0, storage=10.0, robustness=None):
    return RunResult(metric=metric, metric_name="top1" if higher else "fid", higher_is_better=higher, wall_s=wall,
                     storage_bytes=storage, fp_storage_bytes=320.0, ops=2.0, fp_ops=64.0,
                     robustness=robustness or {})


def test_spec_key_is_stable_and_changes_with_the_recipe():
    a = RunSpec.make(task="classification", dataset="synthetic", method="xnor", algorithm="xnor",
                     options={"width": 0.25, "sizes": [1, 2]})
    b = RunSpec.make(task="classification", dataset="synthetic", method="xnor", algorithm="xnor",
                     options={"sizes": [1, 2], "width": 0.25})
    assert a.key() == b.key() and a.options_dict == {"width": 0.25, "sizes": [1, 2]}
    assert RunSpec.make(**{**a.to_dict(), "lr": 0.5}).key() != a.key()


def test_track_ratios_follow_their_definitions():
    def spec(method, grid=0, lr=1e-3):
        return RunSpec.make(task="classification", dataset="d", method=method, algorithm=method, lr=lr, grid=grid)

    runs = [(spec(FP), _result(80.0, wall=2.0, storage=320.0, robustness={"noise": 40.0})),
            (spec(FP, 1, 1e-4), _result(80.0)),
            (spec("xnor"), _result(60.0, wall=4.0, robustness={"noise": 15.0})),
            (spec("xnor", 1, 1e-4), _result(40.0))]
    (fp_t, x) = tracks.task_tracks(runs)
    assert fp_t.method == FP and fp_t.ratios["accuracy"] == 1.0 and fp_t.ratios["stability"] == 1.0
    assert x.ratios["accuracy"] == pytest.approx(0.75)
    assert x.ratios["robustness"] == pytest.approx(15 / 40)
    assert x.ratios["train_time"] == pytest.approx(0.5)
    assert x.ratios["stability"] == pytest.approx(1 - 10 / 50)  # cv of {60, 40} = 10 / 50
    assert x.ratios["storage"] == pytest.approx(32.0) and x.ratios["ops"] == pytest.approx(32.0)
    scores = tracks.overall([fp_t, x])
    expected = math.sqrt(sum(v * v for v in x.ratios.values()) / len(x.ratios))
    assert scores["xnor"]["overall"] == pytest.approx(expected)
    assert scores["xnor"]["overall_no_complexity"] < scores["xnor"]["overall"]
    # lower-is-better metrics are inverted: FID 20 against the teacher's 10 is half as good
    assert tracks.metric_ratio(20.0, 10.0, higher_is_better=False) == pytest.approx(0.5)


def test_unknown_suite_task_and_method_name_the_valid_ones():
    with pytest.raises(ValueError, match="valid: \\['smoke', 'paper', 'full', 'latent', 'w1a1'\\]"):
        suites.build("nope")
    with pytest.raises(ValueError, match="its tasks"):
        suites.build("paper", tasks=["classification"])
    with pytest.raises(ValueError, match="its methods"):
        suites.build("paper", methods=["nope"])


def test_latent_suite_is_the_papers_latent_ablation_in_miniature():
    specs = suites.build("latent", seeds=[0, 1, 2])
    assert {s.dataset for s in specs} == {"latent_fashion_mnist"} and {s.seed for s in specs} == {0, 1, 2}
    assert [s.method for s in specs if s.seed == 0] == [FP, "baseline", "+lmb", "+lrm", "+lmb+lrm", "binarydm",
                                                       "lsq-w2a4", "xnor"]
    from suite.tasks import diffusion

    opts = diffusion.options_of(specs[0])
    assert opts["config"] == "ldm_demo" and opts["pretrained"].endswith("ldm_fmnist")


def test_w1a1_suite_is_bidms_ablation_and_the_other_w1a1_methods():
    from binarydm import algorithms
    from suite.report import bits_of

    specs = suites.build("w1a1", seeds=[0, 1, 2])
    by = {s.method: s for s in specs if s.seed == 0}
    assert {bits_of(s) for m, s in by.items() if m not in (FP, "binarydm")} == {"W1A1"}
    assert bits_of(by["binarydm"]) == "W1A4" and all(s.dataset == "fashion_mnist" for s in specs)
    assert by["bidm"].train_dict == {"loss.spd_weight": 0.01} and by["bidm-spd"].train_dict == {}
    # each ablation row removes one part of the full row
    full = algorithms.preset("bidm", **by["bidm"].quant_dict)
    for method, removed in (("bidm-connection", {"timestep_connection": 0}), ("bidm-scale_map", {"scale_map": False}),
                            ("bidm-shortcut", {"shortcut": False})):
        assert algorithms.preset("bidm", **by[method].quant_dict) == algorithms.preset("bidm", **removed) != full
        assert by[method].train_dict == by["bidm"].train_dict


def test_paper_suite_is_binarydms_w1a4_comparison():
    specs = suites.build("paper")
    methods = {s.method for s in specs}
    assert methods == {FP, "baseline", "+lmb", "+lrm", "+lmb+lrm", "binarydm", "ebb", "lsq-w2a4", "xnor", "reactnet",
                       "biper"}
    from suite.report import bits_of

    assert {bits_of(s) for s in specs if s.method != FP} == {"W1A4", "W2A4"}
    bdm = next(s for s in specs if s.method == "binarydm")
    assert bdm.train_dict == {"loss.lrm_weight": suites.LRM_WEIGHT, "progressive.enabled": True}
    assert all(s.task == "diffusion" and s.dataset == "fashion_mnist" for s in specs)
    # The ablation: each row adds one component to the one before it.
    by = {s.method: s for s in specs}
    assert by["baseline"].train_dict == {} and by["+lmb"].algorithm == "lmb" and by["+lmb"].train_dict == {}
    assert by["+lrm"].algorithm == "baseline" and by["+lrm"].train_dict == {"loss.lrm_weight": suites.LRM_WEIGHT}
    assert by["ebb"].train_dict["ebb.enabled"] is True
    from binarydm.training.config import load_config

    assert load_config().loss.lrm_weight == suites.LRM_WEIGHT  # one lambda for the suite and training


def test_seeds_repeat_every_run():
    specs = suites.build("paper", methods=["binarydm"], seeds=[0, 1, 2])
    assert sorted((s.method, s.seed) for s in specs) == sorted((m, k) for m in (FP, "binarydm") for k in (0, 1, 2))
    assert len({s.key() for s in specs}) == 6


@pytest.mark.slow
def test_smoke_suite_end_to_end_then_cached(tmp_path, capsys):
    import bench

    out = tmp_path / "smoke"
    report = bench.main(["suite=smoke", f"out={out}", "progress=false"])
    specs = suites.build("smoke")
    rows = list(csv.DictReader((out / "runs.csv").open()))
    assert len(rows) == len(specs)  # every run is a row
    assert {r["key"] for r in rows} == {s.key() for s in specs}
    for r in rows:
        for col in ("metric", "wall_s", "storage_bytes", "ops"):
            assert math.isfinite(float(r[col])), (r["task"], r["method"], col, r[col])
    assert {(r["task"], r["method"]) for r in rows} >= {(t, m) for t in ("diffusion", "classification", "language")
                                                         for m in (FP, "xnor", "binarydm")}
    overall = list(csv.DictReader((out / "overall.csv").open()))
    assert {r["method"] for r in overall} == {FP, "xnor", "binarydm"}
    for r in overall:
        assert math.isfinite(float(r["overall"])) and float(r["overall"]) > 0
    quantized = [r for r in list(csv.DictReader((out / "tracks.csv").open())) if r["method"] != FP]
    assert all(float(r["storage"]) > 1 for r in quantized)
    assert any(r["stability"] for r in quantized if r["task"] == "classification")
    text = report.read_text()
    assert "n/a" not in text.split("## Tracks")[0] and "Failed runs" not in text
    # the diffusion sample grids are copied next to the report (it stands without runs/)
    assert sorted(p.name for p in (out / "grids").glob("*.png")) == [f"diffusion_synthetic_{m}.png"
                                                                      for m in ("binarydm", FP, "xnor")]
    assert "](grids/diffusion_synthetic_binarydm.png)" in text
    for png in ("metric_by_method.png", "tradeoff.png", "tracks.png"):
        assert (out / png).stat().st_size > 1000
    # a second invocation finds every run in the cache and trains nothing
    capsys.readouterr()
    bench.main(["suite=smoke", f"out={out}", "progress=false"])
    assert f"{len(specs)} already done" in capsys.readouterr().out


def test_bench_arguments_are_typed_and_bad_ones_are_one_line_errors():
    import bench

    from binarydm.errors import UsageError

    with pytest.raises(UsageError, match=r"unknown key 'suits'.*valid keys in the top level: suite, out"):
        bench.parse(["suits=smoke"])
    with pytest.raises(UsageError, match=r"^steps \(from the command line\): .*'many'"):
        bench.parse(["steps=many"])
    with pytest.raises(UsageError, match=r"^options.diffusion .*Dict"):
        bench.parse(["options.diffusion=3"])
    args = bench.parse(["dataset.classification=cifar10", "methods=[binarydm,xnor]", "seeds=[0,1]",
                        "options.diffusion={fid_samples: 300, overrides: [optim.lr=0.1]}"])
    assert args.dataset == {"classification": "cifar10"} and args.methods == ["binarydm", "xnor"]
    assert args.seeds == [0, 1] and args.out == "bench/smoke"
    assert args.options == {"diffusion": {"fid_samples": 300, "overrides": ["optim.lr=0.1"]}}


def test_bench_cli_bad_argument_exits_2_with_one_line():
    root = Path(__file__).resolve().parents[2]
    for argv, token in ((["suits=smoke"], "suits"), (["suite=nope"], "nope"), (["progress=maybe"], "progress")):
        proc = subprocess.run([sys.executable, str(root / "tools" / "bench.py"), *argv], capture_output=True,
                              text=True, cwd=root, timeout=300)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
        assert token in lines[0]


def test_failed_run_is_recorded_and_retried(tmp_path, monkeypatch):
    from suite import runner

    spec = RunSpec.make(task="classification", dataset="synthetic", method=FP, algorithm=FP)
    calls = []

    def boom(spec, ctx):
        calls.append(spec)
        raise RuntimeError("disk full")

    monkeypatch.setattr(runner.TASKS["classification"], "run", boom)
    done, failed = runner.run_all([spec], tmp_path, progress=False, log=lambda s: None)
    assert done == [] and failed[0][1] == "RuntimeError: disk full"
    err = json.loads((tmp_path / "runs" / spec.key() / "error.json").read_text())
    assert "disk full" in err["error"]
    monkeypatch.setattr(runner.TASKS["classification"], "run", lambda s, c: _result(50.0))
    done, failed = runner.run_all([spec], tmp_path, progress=False, log=lambda s: None)
    assert failed == [] and done[0][1].metric == 50.0 and len(calls) == 1
    assert not (tmp_path / "runs" / spec.key() / "error.json").exists()


def test_diffusion_run_config_carries_the_quantization_and_the_binarydm_switches(tmp_path):
    from suite.tasks import diffusion
    from suite.tasks.base import Context

    from binarydm.training.runner import quant_config_of

    specs = {s.method: s for s in suites.build("paper", steps=7)}
    ctx = Context(tmp_path, tmp_path / "cache", progress=False)
    xnor = diffusion.run_config(specs["xnor"], ctx)
    q = quant_config_of(xnor)
    assert (q.weight, q.act, q.w_bits, q.a_bits, q.attention) == ("xnor", "lsq", 1, 4, True)
    assert xnor.loss.lrm_weight == 0.0 and not xnor.progressive.enabled and xnor.trainer.max_steps == 7
    assert quant_config_of(diffusion.run_config(specs["lsq-w2a4"], ctx)).w_bits == 2
    bdm = diffusion.run_config(specs["binarydm"], ctx)
    assert bdm.loss.lrm_weight == suites.LRM_WEIGHT and bdm.progressive.enabled and quant_config_of(bdm).weight == "lmb"
    assert diffusion.run_config(specs[FP], ctx).quant == "none"
    ebb = diffusion.run_config(specs["ebb"], ctx)  # EBB's two stages: the transition half-way through the run
    assert ebb.ebb.enabled and ebb.ebb.transition_step == 3 and quant_config_of(ebb).weight == "ebb"
    assert diffusion.run_config(specs["+lrm"], ctx).loss.lrm_weight == suites.LRM_WEIGHT
    assert isinstance(xnor.optim.lr, float) and xnor.quant_options == {"act": "lsq", "a_bits": 4, "attention": True}
    biper = RunSpec.make(**{**specs["biper"].to_dict(), "quant": {"omega": 10, "act": "lsq", "a_bits": 4},
                            "options": {"overrides": ["optim.lr=0.5"]}})
    cfg = diffusion.run_config(biper, ctx)
    assert quant_config_of(cfg) == algorithms.preset("biper", omega=10, act="lsq", a_bits=4) and cfg.optim.lr == 0.5


def _paired_result(metric, mse_noise, mse_teacher, wall=10.0):
    return RunResult(metric=metric, metric_name="fid", higher_is_better=False, wall_s=wall, storage_bytes=10.0,
                     fp_storage_bytes=320.0, ops=1.0, fp_ops=10.0,
                     extra={"mse_noise": mse_noise, "mse_teacher": mse_teacher, "grid": "none"})


def test_tracks_average_seeds_and_rate_fidelity(tmp_path):
    from suite import report
    from suite.tracks import task_tracks

    runs = []
    for seed, (fid_q, mse_q) in enumerate([(100.0, 0.06), (110.0, 0.07), (120.0, 0.08)]):
        fp = RunSpec.make(task="diffusion", dataset="synthetic", method=FP, algorithm=FP, seed=seed)
        q = RunSpec.make(task="diffusion", dataset="synthetic", method="binarydm", algorithm="lmb", seed=seed)
        runs += [(fp, _paired_result(50.0, 0.05, 0.0)), (q, _paired_result(fid_q, mse_q, mse_q - 0.04))]
    tracks = {t.method: t for t in task_tracks(runs)}
    bdm = tracks["binarydm"]
    assert bdm.metric == pytest.approx(110.0) and bdm.metric_std == pytest.approx(10.0) and bdm.seeds == 3
    assert bdm.ratios["accuracy"] == pytest.approx(50.0 / 110.0)
    assert bdm.ratios["fidelity"] == pytest.approx(0.05 / 0.07)
    assert bdm.extra["mse_teacher"] == pytest.approx((0.03, 0.01))
    path = report.write(tmp_path, "paper", runs, [], list(tracks.values()), 1.0, plots=False)
    text = path.read_text()
    assert "| 1 | binarydm | W1A4 | 3 | 110 ± 10 | 0.03 ± 0.01 | 0.07 ± 0.01 |" in text

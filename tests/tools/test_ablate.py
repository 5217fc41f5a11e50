"""tools/ablate.py on cached runs: its table, the FID stage's caching and the per-run CSV (training and
FID themselves are binarydm.train and tools/fid_curve.py's stages, tested on their own)."""

import csv
import json

import pytest

import ablate
import fid_curve


def _cached(out, variant, seed, mse, dataset="fashion_mnist"):
    run = out / variant / f"seed{seed}"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(f"data:\n  name: {dataset}\n")
    (run / "metrics.json").write_text(json.dumps({"val/simple": 2 * mse, "val/mse_teacher": mse, "wall_s": 1.0}))
    return run


def test_fid_is_scored_once_per_run_and_tabled_with_the_paired_metric(tmp_path, monkeypatch):
    out = tmp_path / "abl"
    mses = {("base", 0): 0.02, ("base", 1): 0.03, ("lmb", 0): 0.015, ("lmb", 1): 0.021}
    for (variant, seed), mse in mses.items():
        _cached(out, variant, seed, mse)
    calls = []

    def fake_point(args, step):
        calls.append((args.run, step, args.num, args.seed, args.ema, args.out))
        return 1000 * json.loads((tmp_path / "abl" / args.run.split("abl/")[1] / "metrics.json").read_text())[
            "val/mse_teacher"]

    monkeypatch.setattr(fid_curve, "point", fake_point)
    argv = [f"out={out}", "steps=400", "seeds=[0,1]", "fid=2000", "variants={base: [quant=baseline], lmb: []}",
            f"per_run={tmp_path / 'runs.csv'}"]
    md = ablate.main(argv).read_text()
    assert len(calls) == 4
    run, step, num, seed, ema, fid_out = calls[-1]
    assert (run, step, num, seed, ema) == (str(out / "lmb" / "seed1"), 400, 2000, 1, False)
    assert fid_out == str(out / "lmb" / "seed1" / "fid2000")
    # FID mean +- std over the seeds beside the paired metric, and both paired differences to the first row
    # (lmb - base: -0.005 and -0.009 in mse_teacher, -5 and -9 in FID)
    assert "| base | 0.05 ± 0.014 | 0.025 ± 0.0071 | 25 ± 7.1 |  |  |" in md
    assert "| lmb | 0.036 ± 0.0085 | 0.018 ± 0.0042 | 18 ± 4.2 | -0.007 ± 0.0028 | -7 ± 2.8 |" in md
    assert json.loads((out / "base" / "seed1" / "metrics.json").read_text())["fid@2000"] == pytest.approx(30.0)
    rows = list(csv.DictReader((tmp_path / "runs.csv").open()))
    assert [(r["variant"], r["seed"], float(r["fid@2000"])) for r in rows] == [
        ("base", "0", 20.0), ("base", "1", 30.0), ("lmb", "0", 15.0), ("lmb", "1", 21.0)]

    assert (out / "ablation.png").stat().st_size > 0

    ablate.main(argv)  # cached: nothing is scored again
    assert len(calls) == 4
    ablate.main(argv[:3] + ["fid=500", argv[4]])  # another sample count is another score
    assert len(calls) == 8 and {c[2] for c in calls[4:]} == {500}


def test_the_plot_draws_every_seed_of_every_ranking_metric(tmp_path):
    results = {"a": {0: {"val/mse_teacher": 0.02, "fid@2000": 190.0}, 1: {"val/mse_teacher": 0.03}},
               "b": {0: {"val/mse_teacher": 0.01}, 1: {"val/mse_teacher": 0.015}}}
    drawn = ablate.plot(results, [0, 1], ["val/mse_teacher", "fid@2000", "fid@500"], tmp_path / "p.png")
    # a metric no run has gets no panel; a variant without the metric keeps its (empty) row
    assert drawn == {"val/mse_teacher": {"a": [0.02, 0.03], "b": [0.01, 0.015]}, "fid@2000": {"a": [190.0], "b": []}}
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"
    assert ablate.plot(results, [0, 1], ["fid@500"], tmp_path / "none.png") == {}
    assert not (tmp_path / "none.png").exists()


def test_cached_reports_what_is_done_and_runs_nothing(tmp_path, monkeypatch):
    out = tmp_path / "abl"
    _cached(out, "base", 0, 0.02)
    run = _cached(out, "base", 1, 0.03)
    metrics = json.loads((run / "metrics.json").read_text())
    (run / "metrics.json").write_text(json.dumps({**metrics, "fid@2000": 200.0}))
    _cached(out, "lmb", 1, 0.01)  # lmb seed 0 not trained yet

    def never(*args, **kwargs):
        raise AssertionError("cached=true must not train or score")

    monkeypatch.setattr(ablate, "run_one", never)
    monkeypatch.setattr(ablate, "add_fid", never)
    md = ablate.main([f"out={out}", "seeds=[0,1]", "fid=2000", "cached=true", "variants={base: [], lmb: []}",
                      f"per_run={tmp_path / 'runs.csv'}"]).read_text()
    assert "| base | 0.05 ± 0.014 | 0.025 ± 0.0071 | 200 |  |  |" in md
    assert "| lmb | 0.02 | 0.01 | - | -0.02 | - |" in md  # paired over the one seed both have
    assert [(r["variant"], r["seed"]) for r in csv.DictReader((tmp_path / "runs.csv").open())] == [
        ("base", "0"), ("base", "1"), ("lmb", "1")]


def test_without_fid_the_table_has_no_fid_column(tmp_path):
    out = tmp_path / "abl"
    _cached(out, "only", 0, 0.02)
    md = ablate.main([f"out={out}", "seeds=[0]", "variants={only: []}"]).read_text()
    assert "fid@" not in md and "| only | 0.04 | 0.02 |  |" in md


def test_fid_of_another_dataset_is_refused(tmp_path, capsys):
    out = tmp_path / "abl"
    _cached(out, "cifar", 0, 0.02, dataset="cifar10")
    with pytest.raises(SystemExit) as exc:
        ablate.main([f"out={out}", "seeds=[0]", "fid=100", "variants={cifar: []}"])
    assert exc.value.code == 2 and "data.name=cifar10" in capsys.readouterr().err


@pytest.mark.parametrize("arg, message", [("fid=many", "fid"), ("variants=@/nonexistent.yaml", "cannot read"),
                                          ("sample_step=25", "sample_step")])
def test_bad_arguments_are_one_line_errors(arg, message, capsys):
    with pytest.raises(SystemExit) as exc:
        ablate.main([arg])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and message in err and "\n" not in err

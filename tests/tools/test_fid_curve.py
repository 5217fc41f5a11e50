"""tools/fid_curve.py without FID: its arguments, output names, curve files and plot (the FID stages are
binarydm.sample and binarydm.fid, tested on their own)."""

import csv
import re

import pytest

import fid_curve


def _curve(path, rows, weights="raw weights"):
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        csv.writer(f).writerows([("step", "fid", "weights"), *((s, v, weights) for s, v in rows)])
    return path


def test_scored_points_are_reused_and_the_curves_drawn_together(tmp_path):
    run = tmp_path / "run"
    for step, fid in ((1000, 80.5), (2000, 70.25)):  # points scored earlier: the tool resumes from them
        (run / "fid_curve_raw" / f"step_{step}").mkdir(parents=True)
        (run / "fid_curve_raw" / f"step_{step}" / "fid.json").write_text(f'{{"fid_cleanfid": {fid}}}')
    ema = _curve(run / "fid_curve" / "fid_curve.csv", [(1000, 90.0), (2000, 95.0)], "EMA weights")
    out = fid_curve.main([f"run={run}", "ema=false", "steps=[2000,1000]", f"also=[{ema}]", "teacher_fid=42.7"])
    assert out == run / "fid_curve_raw" / "fid_curve.csv"  # its own directory: the EMA curve is untouched
    assert fid_curve.read_curve(out) == ("raw weights", [(1000, 80.5), (2000, 70.25)])
    assert fid_curve.read_curve(ema) == ("EMA weights", [(1000, 90.0), (2000, 95.0)])
    assert (out.parent / "fid_curve.png").stat().st_size > 1000


@pytest.mark.parametrize("args, message", [
    (["steps=[700]"], r"steps: no checkpoint .*step=700\.ckpt; pick steps among \['step=500\.ckpt'\]"),
    (["steps=[500]", "also=[{bad}]"], r"also=.*other\.csv: not a fid_curve\.csv of this tool"),
    (["steps=[]"], "run= and steps=.* are required"),
    (["steps=[500]", "ema=maybe"], "ema"),
])
def test_bad_arguments_are_one_line_and_exit_2(tmp_path, capsys, args, message):
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    (tmp_path / "run" / "checkpoints" / "step=500.ckpt").write_bytes(b"")
    (tmp_path / "other.csv").write_text("a,b\n1,2\n")
    with pytest.raises(SystemExit) as info:
        fid_curve.main([f"run={tmp_path / 'run'}", *(a.format(bad=tmp_path / "other.csv") for a in args)])
    err = capsys.readouterr().err.strip().splitlines()
    assert info.value.code == 2 and len(err) == 1 and re.search(message, err[0]), err

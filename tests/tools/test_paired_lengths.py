"""tools/paired_lengths.py: paired differences to a reference row per length, from ablate's per-run CSVs."""

import csv

import pytest

import paired_lengths


def _csv(path, rows):
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["variant", "seed", "val/mse_teacher", "val/simple"])
        w.writerows(rows)
    return str(path)


def test_pairs_seeds_across_csvs_of_one_length_and_draws_the_figure(tmp_path, capsys):
    a400 = _csv(tmp_path / "a400.csv", [("ref", 0, 0.02, 0.05), ("ref", 1, 0.04, 0.05), ("x", 0, 0.021, 0.05)])
    b400 = _csv(tmp_path / "b400.csv", [("y", 1, 0.03, 0.05), ("y", 2, 0.5, 0.05)])  # seed 2: no ref, not paired
    a800 = _csv(tmp_path / "a800.csv", [("ref", 0, 0.01, 0.04), ("x", 0, 0.009, 0.04)])
    out = tmp_path / "fig" / "lengths.png"
    result = paired_lengths.main(["ref=ref", "variants=[x,y]", f"out={out}",
                                  f"csvs={{400: [{a400}, {b400}], 800: [{a800}]}}"])
    assert result["x"][400] == [(0, pytest.approx(0.05))]
    assert result["x"][800] == [(0, pytest.approx(-0.1))]
    assert result["y"] == {400: [(1, pytest.approx(-0.25))]}
    assert out.is_file() and out.stat().st_size > 0
    printed = capsys.readouterr().out
    assert "x vs ref, 800 steps: -10.0 %" in printed and "y vs ref, 400 steps: -25.0 %" in printed


def test_conflicting_duplicates_and_a_missing_reference_are_refused(tmp_path, capsys):
    a = _csv(tmp_path / "a.csv", [("ref", 0, 0.02, 0.05), ("x", 0, 0.03, 0.05)])
    b = _csv(tmp_path / "b.csv", [("x", 0, 0.04, 0.05)])
    for args, message in [([f"csvs={{400: [{a}, {b}]}}", "ref=ref"], "differs"),
                          ([f"csvs={{400: [{b}]}}", "ref=ref"], "no ref rows"),
                          ([f"csvs={{400: [{a}]}}", "ref=ref", "metric=fid@2000"], "no column fid@2000"),
                          ([f"csvs={{400: [{tmp_path / 'none.csv'}]}}", "ref=ref"], "does not exist"),
                          (["ref=ref"], "required")]:
        with pytest.raises(SystemExit) as exc:
            paired_lengths.main([*args, "variants=[x]", f"out={tmp_path / 'f.png'}"])
        assert exc.value.code == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error:") and message in err and "\n" not in err

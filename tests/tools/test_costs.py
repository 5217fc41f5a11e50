"""tools/costs.py: binarydm.summary's storage and OPs per config, and the packed file that storage becomes."""

import pytest

import costs


def test_packed_file_matches_the_storage_figure():
    rows = costs.costs("binarydm/assets/fmnist_teacher", {"w1a4": {"preset": "lmb"}, "bidm": {"preset": "bidm"},
                                                          "xnor": {"preset": "xnor"}})
    assert [r[0] for r in rows] == ["w1a4", "bidm", "xnor"]
    for name, storage, ops, packed in rows:
        assert storage > 2 and ops > 2, name
        # The file holds what summary counts, plus the header and the quantizers' float tensors.
        assert packed == pytest.approx(storage, rel=0.08), name


def test_a_config_without_preset_is_one_line():
    from binarydm.errors import UsageError

    with pytest.raises(UsageError, match="needs preset=NAME"):
        costs.costs("binarydm/assets/fmnist_teacher", {"bad": {"keep_bits": 8}})

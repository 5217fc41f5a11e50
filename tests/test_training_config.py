"""Configuration loading and the clear errors of the training entry point."""

import pytest

from binarydm.train import main
from binarydm.training.config import ConfigError, available_configs, load_config
from binarydm.training.data import DataConfig, DatasetNotFoundError, build_dataset
from binarydm.training.teacher import TeacherNotFoundError, load_unet


def test_experiment_files_only_hold_keys_of_the_base():
    for name in available_configs():
        cfg = load_config(name)  # raises on an unknown key or a badly typed value
        assert cfg.name


def test_overrides_apply_after_the_experiment_file():
    cfg = load_config("tiny", ["trainer.max_steps=3", "optim.lr=0.5", "quant_options.dual_levels=2"])
    assert cfg.trainer.max_steps == 3 and cfg.optim.lr == 0.5 and cfg.quant_options.dual_levels == 2
    assert cfg.data.name == "synthetic"  # from tiny.yaml
    assert cfg.loss.lrm_weight == 1.0  # from base.yaml


def test_unknown_key_lists_the_valid_keys(capsys):
    with pytest.raises(ConfigError, match=r"unknown config key 'trainer.max_stepz'.*max_steps"):
        load_config("tiny", ["trainer.max_stepz=3"])
    assert main(["config=tiny", "optim.learning_rate=1"]) == 2
    err = capsys.readouterr().err
    assert "unknown config key 'optim.learning_rate'" in err and "lr, weight_decay" in err


def test_bad_value_type_names_key_and_expected_type(capsys):
    with pytest.raises(ConfigError, match=r"'trainer.max_steps'.*expects an integer.*'many'"):
        load_config("tiny", ["trainer.max_steps=many"])
    assert main(["config=tiny", "data.download=maybe"]) == 2
    assert "'data.download'" in capsys.readouterr().err


def test_unknown_experiment_and_malformed_override():
    with pytest.raises(ConfigError, match="available"):
        load_config("no_such_experiment")
    with pytest.raises(ConfigError, match="key=value"):
        load_config("tiny", ["trainer.max_steps"])


def test_missing_dataset_says_how_to_get_it(tmp_path, capsys):
    with pytest.raises(DatasetNotFoundError, match="apt-get install dataset-fashion-mnist"):
        build_dataset(DataConfig(name="fashion_mnist", root=str(tmp_path)), train=True)
    with pytest.raises(DatasetNotFoundError, match="data.download=true"):
        build_dataset(DataConfig(name="cifar10", root=str(tmp_path)), train=True)
    assert main(["config=tiny", f"out_dir={tmp_path}", "data.name=fashion_mnist", f"data.root={tmp_path}"]) == 2
    assert "dataset-fashion-mnist" in capsys.readouterr().err


def test_offline_teacher_error_names_the_option(tmp_path):
    with pytest.raises(TeacherNotFoundError, match=r"model.pretrained='nobody/no-such-ddpm'"):
        load_unet("nobody/no-such-ddpm")
    (tmp_path / "empty").mkdir()
    with pytest.raises(TeacherNotFoundError, match="model.pretrained"):
        load_unet(str(tmp_path / "empty"))


def test_local_teacher_directory_loads(tmp_path, tiny_unet):
    tiny_unet.save_pretrained(tmp_path / "t" / "unet")  # a pipeline layout: the unet/ subfolder is found
    loaded = load_unet(str(tmp_path / "t"))
    for (k, a), (_, b) in zip(tiny_unet.state_dict().items(), loaded.state_dict().items()):
        assert a.equal(b), k

"""Configuration loading and the clear errors of the training entry point."""

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from binarydm import algorithms
from binarydm.errors import UsageError
from binarydm.train import main
from binarydm.training.config import (
    ConfigError,
    DataConfig,
    RunConfig,
    available_configs,
    from_argv,
    load_config,
    structured,
)
from binarydm.training.data import DatasetNotFoundError, build_dataset
from binarydm.training.runner import quant_config_of
from binarydm.training.teacher import TeacherNotFoundError, load_unet
from binarydm.training.validate import check_config

ROOT = Path(__file__).resolve().parents[1]


def test_every_experiment_file_loads_and_converts_to_a_run_config():
    assert {"demo", "tiny", "ddpm_cifar"} <= set(available_configs()) and "base" not in available_configs()
    for name in available_configs():
        cfg = load_config(name)  # raises on an unknown key or a badly typed value
        run = OmegaConf.to_object(cfg)
        assert isinstance(run, RunConfig) and isinstance(run.data, DataConfig) and run.name


def test_defaults_live_in_the_dataclasses():
    cfg = load_config()  # no experiment: the defaults
    assert OmegaConf.to_object(cfg) == RunConfig()
    assert cfg.loss.lrm_weight == 1.0 and cfg.optim.betas == (0.9, 0.999) and cfg.quant == "w1a4"
    # an experiment file changes only what it names
    tiny = OmegaConf.to_object(load_config("tiny"))
    assert tiny.data.name == "synthetic" and tiny.optim.lr == 0.001 and tiny.loss == RunConfig().loss


def test_overrides_apply_after_the_experiment_file():
    cfg = load_config("tiny", ["trainer.max_steps=3", "optim.lr=0.5", "quant_options.dual_levels=2"])
    assert cfg.trainer.max_steps == 3 and cfg.optim.lr == 0.5 and cfg.quant_options.dual_levels == 2
    assert cfg.data.name == "synthetic"  # from tiny.yaml
    assert cfg.loss.lrm_weight == 1.0  # from the dataclass default
    assert isinstance(cfg.optim.lr, float)  # typed: a float field holds a float


def test_values_are_typed_dotted_mappings_and_come_before_the_overrides():
    cfg = load_config("tiny", ["optim.lr=0.25"], values={"optim.lr": 0.5, "trainer.max_steps": 7,
                                                          "quant_options": {"omega": 10}, "optim.betas": [0.5, 0.6]})
    assert cfg.optim.lr == 0.25 and cfg.trainer.max_steps == 7 and cfg.quant_options == {"omega": 10}
    assert cfg.optim.betas == (0.5, 0.6)
    with pytest.raises(ConfigError, match=r"unknown key 'trainer.nope' \(from the given values\)"):
        load_config("tiny", values={"trainer.nope": 1})


def test_list_values_and_nested_sections():
    cfg = load_config("tiny", ["optim.betas=[0.8,0.9]", "trainer.devices=[0,1]", "model.config.block_out_channels=[4,8]",
                               "model.config.norm_num_groups=2"])
    assert cfg.optim.betas == (0.8, 0.9) and list(cfg.trainer.devices) == [0, 1]
    assert list(cfg.model.config.block_out_channels) == [4, 8] and cfg.model.config.layers_per_block == 1
    with pytest.raises(ConfigError, match=r"^optim.betas \(from the command line\): .*length"):
        load_config("tiny", ["optim.betas=[0.9]"])
    with pytest.raises(ConfigError, match=r"^optim \(from the command line\) is a section.*optim.lr="):
        load_config("tiny", ["optim=3"])
    with pytest.raises(ConfigError, match=r"^unknown key 'model.nope'.*pretrained, subfolder, config"):
        load_config("tiny", ["model.nope=1"])


@pytest.mark.parametrize("key, values", [
    ("trainer.devices", ["1", "auto", "[0,1]"]),
    ("trainer.precision", ["32-true", "16", "bf16-mixed"]),
    ("trainer.val_check_interval", ["3", "0.5"]),
    ("trainer.limit_val_batches", ["1", "0.25"]),
])
def test_keys_of_several_types(key, values):
    for value in values:
        cfg = load_config("tiny", [f"{key}={value}"])
        assert str(OmegaConf.select(cfg, key)).replace(" ", "") == value


def test_unknown_key_lists_the_valid_keys(capsys):
    with pytest.raises(ConfigError, match=r"unknown key 'trainer.max_stepz'.*max_steps"):
        load_config("tiny", ["trainer.max_stepz=3"])
    with pytest.raises(ConfigError, match=r"unknown key 'learning_rate'.*the top level: name, out_dir"):
        load_config("tiny", ["learning_rate=3"])
    assert main(["config=tiny", "optim.learning_rate=1"]) == 2
    err = capsys.readouterr().err.strip()
    assert "unknown key 'optim.learning_rate'" in err and "lr, weight_decay" in err and "\n" not in err


def test_experiment_files_are_checked_too(tmp_path):
    (tmp_path / "bad.yaml").write_text("optim:\n  lr: fast\n")
    (tmp_path / "typo.yaml").write_text("trainer:\n  max_step: 3\n")
    with pytest.raises(ConfigError, match=r"optim.lr \(from .*bad.yaml\)"):
        load_config("bad", directory=tmp_path)
    with pytest.raises(ConfigError, match=r"unknown key 'trainer.max_step' \(from .*typo.yaml\)"):
        load_config("typo", directory=tmp_path)


def test_bad_value_type_names_key_and_value(capsys):
    with pytest.raises(ConfigError, match=r"^trainer.max_steps \(from the command line\): .*'many'"):
        load_config("tiny", ["trainer.max_steps=many"])
    with pytest.raises(ConfigError, match=r"^seed .*1.5"):
        load_config("tiny", ["seed=1.5"])
    with pytest.raises(ConfigError, match=r"^data.image_size .*None"):
        load_config("tiny", ["data.image_size=null"])
    with pytest.raises(ConfigError, match=r"^quant_options .*Dict"):
        load_config("tiny", ["quant_options=3"])
    assert main(["config=tiny", "data.download=maybe"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: data.download") and "maybe" in err and len(err.strip().splitlines()) == 1


def test_typed_config_checks_later_assignments_too():
    cfg = load_config("tiny")
    cfg.resume = "runs/x/last.ckpt"
    with pytest.raises(Exception, match="max_steps"):
        cfg.trainer.max_steps = "many"


def test_unknown_experiment_and_malformed_override():
    with pytest.raises(ConfigError, match="available: .*tiny"):
        load_config("no_such_experiment")
    with pytest.raises(ConfigError, match="key=value"):
        load_config("tiny", ["trainer.max_steps"])
    assert isinstance(ConfigError("x"), UsageError)  # exit status 2 at the command line


def test_from_argv_and_run_config_objects():
    cfg = from_argv(["config=tiny", "trainer.max_steps=2", "overwrite=true"])
    assert cfg.name == "tiny" and cfg.trainer.max_steps == 2 and cfg.overwrite is True
    run = dataclasses.replace(RunConfig(), name="mine")
    assert structured(run).name == "mine" and structured(cfg) is cfg
    assert structured({"optim.lr": 0.5}).optim.lr == 0.5


def test_quant_options_set_fields_and_algorithm_parameters(tmp_path):
    cfg = load_config("tiny", [f"out_dir={tmp_path}", "quant=biper", "quant_options={omega: 10, a_bits: 4, act: lsq}"])
    check_config(cfg)
    assert quant_config_of(cfg) == algorithms.preset("biper", omega=10, a_bits=4, act="lsq")
    assert quant_config_of(cfg) != algorithms.preset("biper")
    bad = load_config("tiny", [f"out_dir={tmp_path}", "quant=biper", "quant_options={omegaa: 10}"])
    with pytest.raises(UsageError, match=r"^quant=biper with quant_options=.*unknown option.*omegaa.*valid.*omega"):
        check_config(bad)
    with pytest.raises(UsageError, match=r"^quant=w1a4 .*unknown QuantConfig field.*omega"):
        check_config(load_config("tiny", [f"out_dir={tmp_path}", "quant_options={omega: 10}"]))


def test_training_cli_bad_config_as_a_subprocess():
    proc = subprocess.run([sys.executable, "-m", "binarydm.train", "config=tiny", "optim.betas=[0.9]"],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 2 and proc.stderr.startswith("error: optim.betas"), proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    help_ = subprocess.run([sys.executable, "-m", "binarydm.train", "--help"], capture_output=True, text=True,
                           cwd=ROOT, timeout=300)
    assert help_.returncode == 0 and "available configs" in help_.stdout and "demo" in help_.stdout
    assert "RunConfig" in help_.stdout


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

"""binarydm.cli: the shared key=value grammar (typed by dataclasses, one-line errors)."""

from dataclasses import dataclass, field
from typing import Optional

import pytest

from binarydm.cli import parse, string_keys
from binarydm.errors import UsageError
from binarydm.training.config import load_config


@dataclass
class _Inner:
    path: str = "a"
    n: int = 1


@dataclass
class _Args:
    out: str = "samples"
    ckpt: Optional[str] = None
    num: int = 16
    eta: float = 0.0
    inner: _Inner = field(default_factory=_Inner)


def test_string_keys_are_the_str_fields_at_every_depth():
    assert string_keys(_Args) == {"out", "ckpt", "inner.path"}


@pytest.mark.parametrize("text", ["0755", "yes", "1e3", "[1, 2]", "null-ish", "3"])
def test_a_string_argument_keeps_its_text(text):
    # YAML would turn 0755 into 493, yes into True and 1e3 into 1000.0: a silent wrong path.
    args = parse(_Args, [f"out={text}", f"ckpt={text}", f"inner.path={text}"])
    assert args.out == text and args.ckpt == text and args.inner.path == text


def test_null_and_quotes_in_string_arguments():
    args = parse(_Args, ["ckpt=null", "out='a b'"])
    assert args.ckpt is None and args.out == "a b"


def test_typed_values_and_errors():
    args = parse(_Args, ["num=3", "eta=1", "inner.n=4"])
    assert (args.num, args.eta, args.inner.n) == (3, 1.0, 4)
    for bad, words in ((["num=many"], "num"), (["nmu=3"], "valid keys in the top level: out, ckpt"),
                       (["inner.x=1"], "section 'inner'"), (["num"], "key=value")):
        with pytest.raises(UsageError, match=words) as err:
            parse(_Args, bad)
        assert "\n" not in str(err.value)


def test_run_config_string_keys_keep_their_text():
    cfg = load_config("tiny", ["name=0755", "model.pretrained=yes"])
    assert cfg.name == "0755" and cfg.model.pretrained == "yes"

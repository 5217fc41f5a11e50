"""Two-process DDP on the CPU (gloo): every rank switches the same groups and holds the same LRM
projections and activation steps, although each rank sees its own half of every batch."""

import json
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent('''
    import json, sys
    import lightning as L
    import torch
    from binarydm.quant import activation_quantizers, weight_quantizers
    from binarydm.training import load_config, run

    out_dir = sys.argv[1]

    class Dump(L.Callback):
        def on_train_end(self, trainer, pl_module):
            student = pl_module.student
            progressive = next(c for c in trainer.callbacks if type(c).__name__ == "ProgressiveInit")
            state = {
                "rank": trainer.global_rank,
                "world": trainer.world_size,
                "history": progressive.history,
                "weights_on": [q.enabled for q in weight_quantizers(student)],
                "acts_on": [q.enabled for q in activation_quantizers(student)],
                "steps": [q.step.item() for q in activation_quantizers(student)],
                "proj": {k: v.tolist() for k, v in pl_module.lrm.projections().items()},
                "param_sum": sum(p.double().sum().item() for p in student.parameters()),
            }
            with open(f"{out_dir}/rank{trainer.global_rank}.json", "w") as f:
                json.dump(state, f)

    cfg = load_config("tiny", [f"out_dir={out_dir}", "trainer.devices=2", "trainer.strategy=ddp",
                               "trainer.accelerator=cpu", "trainer.max_steps=5", "sample.num_images=0",
                               "trainer.val_check_interval=100", "export=false", "report=false"])
    run(cfg, extra_callbacks=[Dump()])
''')


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_ddp_ranks_agree_on_groups_projections_and_steps(tmp_path):
    script = tmp_path / "ddp_run.py"
    script.write_text(SCRIPT)
    env = {**__import__("os").environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()),
           "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, str(script), str(tmp_path)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    r0 = json.loads((tmp_path / "rank0.json").read_text())
    r1 = json.loads((tmp_path / "rank1.json").read_text())
    assert (r0["rank"], r1["rank"], r0["world"]) == (0, 1, 2)
    assert r0["history"] == r1["history"] == [[0, "mid_block"], [1, "level_1"], [2, "level_0"], [3, "attention"]]
    assert r0["weights_on"] == r1["weights_on"] and all(r0["weights_on"])
    assert r0["acts_on"] == r1["acts_on"] and all(r0["acts_on"])
    assert r0["steps"] == r1["steps"]
    assert r0["proj"].keys() == r1["proj"].keys()
    for k in r0["proj"]:
        assert torch.equal(torch.tensor(r0["proj"][k]), torch.tensor(r1["proj"][k])), k
    # DDP keeps the replicas identical: same gradients (all-reduced), same updates.
    assert r0["param_sum"] == r1["param_sum"]

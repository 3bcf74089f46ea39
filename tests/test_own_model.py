"""Issue 14's acceptance: a user's own model file, checkpoint and image folder through every
command (``tune``, ``analyze``, ``search``, ``compress``, ``export``, ``report``) with
``--model file.py:build --checkpoint ck.pt --data folder/``, small settings; and the README's
"your own model" Python block, executed as written."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from torch import nn
from user_inputs import make_image_folder

from bitsmith.cli import EXIT_OK, main
from bitsmith.cost import estimate
from bitsmith.rundir import load_run

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).resolve().parents[1]

OWN_MODEL = '''
import torch
from torch import nn


class Net(nn.Module):
    """Three conv blocks and a linear head: a model bitsmith does not ship."""

    def __init__(self, num_classes=3):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
            nn.Conv2d(8, 16, 3, padding=1, stride=2), nn.BatchNorm2d(16), nn.ReLU(),
            nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.head = nn.Linear(16, num_classes)

    def forward(self, x):
        return self.head(self.features(x).mean((2, 3)))


def build(num_classes=3):
    return Net(num_classes)
'''


@pytest.fixture(scope="module")
def own(tmp_path_factory) -> dict[str, str]:
    """The model file, a checkpoint trained here on the folder's images, the folder."""
    from bitsmith.engine import fit
    from bitsmith.inputs import load_workload

    root = tmp_path_factory.mktemp("own")
    (root / "net.py").write_text(OWN_MODEL)
    folder = make_image_folder(root / "images", per_class=40, size=12)
    work = load_workload(f"{root / 'net.py'}:build", str(folder))
    torch.manual_seed(0)
    net = work.model.train()
    fit(net, work.loader("calibration", 8, shuffle=True, seed=0), epochs=15, lr=1e-2)
    torch.save({"state_dict": net.state_dict(), "epoch": 15}, root / "ck.pt")
    return {"model": f"{root / 'net.py'}:build", "checkpoint": str(root / "ck.pt"),
            "data": str(folder), "root": str(root)}


def _run(argv: list[str]) -> None:
    assert main(argv) == EXIT_OK, argv


def _chosen(run_dir: Path) -> dict:
    run = load_run(run_dir)
    assert run.chosen is not None and run.run["rule"]
    return {"run": run, "cost": estimate(run.table, run.policy, masks=run.masks)}


def test_every_command_takes_the_users_model_checkpoint_and_images(own, tmp_path, capsys):
    inputs = ["--model", own["model"], "--checkpoint", own["checkpoint"], "--data", own["data"]]
    out = {name: tmp_path / name for name in ("tune", "analyze", "search", "compress", "export")}

    _run(["layers", "--model", own["model"], "--checkpoint", own["checkpoint"],
          "--size", "12"])
    w8 = next(iter(_fp32_and_w8_sizes(own)))
    _run(["tune", *inputs, "--objective", "max-accuracy", "--cost", "size",
          "--budget", str(w8), "--n-trials", "3", "--strategy", "random",
          "--out", str(out["tune"])])
    tuned = _chosen(out["tune"])
    assert tuned["cost"].size_bytes <= w8

    _run(["analyze", *inputs, "--bits", "4,8", "--methods", "fisher", "--avg-bits", "6",
          "--out", str(out["analyze"])])
    analyzed = _chosen(out["analyze"])
    limit = json.loads((out["analyze"] / "run.json").read_text())
    assert analyzed["run"].sensitivity is not None and limit["test"]["chosen"] is not None

    _run(["search", *inputs, "--avg-bits", "6", "--w-bits", "4,8", "--act-bits", "8",
          "--first-last", "same", "--search-steps", "2", "--qat-steps", "2",
          "--batch-size", "8", "--threads", "1", "--out", str(out["search"])])
    assert _chosen(out["search"])["cost"].avg_weight_bits <= 6.0 + 1e-9

    _run(["compress", *inputs, "--sparsity", "0.5", "--ratio", "2", "--steps", "2",
          "--batch-size", "8", "--out", str(out["compress"])])
    compressed = json.loads((out["compress"] / "result.json").read_text())
    assert compressed["cost"]["size_bytes"] <= compressed["budget"]["size_bytes"]
    assert compressed["payload_equals_cost_model"]

    _run(["export", *inputs, "--policy", str(out["tune"] / "policy.yaml"), "--batch", "1",
          "--runs", "3", "--runs-large", "3", "--out", str(out["export"])])
    summary = json.loads((out["export"] / "summary.json").read_text())
    assert summary["agreement"]["count"] == 48  # the test part of the folder (0.4 of 120)

    for name in ("tune", "analyze", "search", "compress"):
        _run(["report", str(out[name])])
        html = (out[name] / "report.html").read_text()
        assert "rule:" in html and "(validation)" in html
    printed = capsys.readouterr().out
    assert printed.count("chosen:") >= 4 and "validation (top-1 %" in printed


def _fp32_and_w8_sizes(own: dict[str, str]) -> list[int]:
    """Size in bytes of the W8A8 policy of the user's model (the tune budget)."""
    from bitsmith import Policy, QSpec, prepare
    from bitsmith.inputs import resolve_model

    net = resolve_model(own["model"], checkpoint=own["checkpoint"])
    _, table, _ = prepare(net, torch.randn(1, 3, 12, 12))
    w8a8 = Policy.uniform(table.names, QSpec("uniform_symmetric", 8, "channel"),
                          QSpec("uniform_asymmetric", 8))
    return [estimate(table, w8a8).size_bytes]


def test_the_readme_python_block_runs_as_written(own, tmp_path, monkeypatch):
    """The README's "your own model" Python block, with its file names pointing here."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Your own model", 1)[1]
    block = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert len(block.strip().splitlines()) <= 10
    monkeypatch.chdir(tmp_path)
    Path("net.py").write_text(OWN_MODEL)
    Path("net.pt").write_bytes(Path(own["checkpoint"]).read_bytes())
    Path("photos").symlink_to(own["data"])
    namespace: dict = {}
    exec(compile(block, "README.md", "exec"), namespace)  # the docs' own code
    result = namespace["result"]
    assert isinstance(result.model, nn.Module) and result.policy
    assert (tmp_path / "runs" / "mine" / "policy.yaml").is_file()


def test_every_name_in_the_readme_python_blocks_is_defined():
    """Each README Python block defines or imports every name it reads (no `model` or
    `calibration_loader` left for the reader to guess)."""
    import ast
    import builtins

    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    assert len(blocks) >= 2
    for block in blocks:
        tree = ast.parse(block)
        defined = set(dir(builtins))
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                defined |= {(a.asname or a.name).split(".")[0] for a in node.names}
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                defined.add(node.id)
        used = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)
                and isinstance(n.ctx, ast.Load)}
        assert used <= defined, used - defined

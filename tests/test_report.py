"""Run directory format, report rendering (HTML / Markdown / JSON), headless-Chromium check, CLI."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

import bitsmith
from bitsmith import Policy, QSpec
from bitsmith.allocation import Sensitivity, bit_candidates
from bitsmith.cost import estimate
from bitsmith.pareto import pareto_front
from bitsmith.report import write_report
from bitsmith.rundir import RunDirError, RunWriter, load_run

W = QSpec("uniform_symmetric", 4, "channel")


def flat(text: str) -> str:
    """CLI output with rich's line wrapping undone."""
    return " ".join(text.split())
A8 = QSpec("uniform_asymmetric", 8)


pytestmark = pytest.mark.usefixtures("one_thread")


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None


@pytest.fixture
def table(tiny_net, images):
    return bitsmith.prepare(tiny_net, images[:1])[1]


def make_run(path: Path, table, *, sensitivity: bool = True, extras: bool = True) -> RunWriter:
    """A complete run directory with synthetic accuracies (no data needed)."""
    run = RunWriter(path, model="TinyNet", dataset="random", eval_set="8 images",
                    producer="test")
    run.write_layers(table)
    run.set_fp32(accuracy=90.0)
    run.add_trial("FP32", policy=Policy({}), accuracy=90.0, source="float")
    for bits, acc in ((8, 89.9), (4, 88.0), (2, 40.0)):
        run.add_trial(f"W{bits}A8", policy=Policy.uniform(table.names, W.replace(bits=bits), A8),
                      accuracy=acc, source="uniform")
    mixed = Policy.uniform(table.names, W, A8).with_layers(
        {"fc": Policy.uniform(["fc"], W.replace(bits=8), A8)["fc"]})
    run.add_trial("mixed", policy=mixed, accuracy=88.5, source="ilp", step=1)
    run.choose("mixed")
    if sensitivity:
        space = bit_candidates(table, W, bits=(2, 4, 8), act=A8)
        vals = {n: [1.0 / (i + 1), 0.1 / (i + 1), 0.0] for i, n in enumerate(table.names)}
        run.write_sensitivity(Sensitivity(space, {"measured_kl": vals}, {"measured_kl": 1.5}))
    if extras:
        for step in range(5):
            run.log_search(step, "random", best_accuracy=80 + step)
            run.log_search(step, "tpe", best_accuracy=82 + step)
        run.write_export([{"name": "onnx-qdq", "size_bytes": 1234, "latency_ms": 0.5,
                           "agreement": 99.5}])
    return run


# ------------------------------------------------------------------ run format
def test_run_writer_round_trip(tmp_path, table):
    make_run(tmp_path / "r", table)
    data = load_run(tmp_path / "r")
    assert data.table.names == table.names and data.table.total_params == table.total_params
    assert [t["name"] for t in data.trials] == ["FP32", "W8A8", "W4A8", "W2A8", "mixed"]
    assert data.chosen["name"] == "mixed" and data.chosen["step"] == 1
    assert data.trials[2]["size_bytes"] == estimate(
        table, Policy.uniform(table.names, W, A8)).size_bytes
    assert data.policy["fc"].weight.bits == 8
    assert data.sensitivity.seconds == {"measured_kl": 1.5}
    assert len(data.search) == 10 and data.export["artifacts"][0]["name"] == "onnx-qdq"
    assert (tmp_path / "r" / data.trials[1]["policy_file"]).is_file()


def test_run_writer_errors(tmp_path, table):
    run = RunWriter(tmp_path / "r", model="m", dataset="d")
    with pytest.raises(ValueError, match="size_bytes"):
        run.add_trial("x", accuracy=1.0)  # no policy, no size
    with pytest.raises(ValueError, match="no policy known"):
        run.choose("x")


def test_load_run_missing_directory(tmp_path):
    with pytest.raises(RunDirError, match="does not exist") as err:
        load_run(tmp_path / "nope")
    assert "run.json" in err.value.missing


@pytest.mark.parametrize("victim", ["run.json", "layers.json", "trials.jsonl", "policy.yaml"])
def test_load_run_names_missing_file(tmp_path, table, victim):
    make_run(tmp_path / "r", table, sensitivity=False, extras=False)
    (tmp_path / "r" / victim).unlink()
    with pytest.raises(RunDirError, match=f"missing {victim}") as err:
        load_run(tmp_path / "r")
    assert err.value.missing == [victim]


def test_load_run_malformed_files(tmp_path, table):
    d = tmp_path / "r"
    make_run(d, table, sensitivity=False, extras=False)
    good = (d / "trials.jsonl").read_text()
    (d / "trials.jsonl").write_text(good + "{not json\n")
    with pytest.raises(RunDirError, match="line 6"):
        load_run(d)
    (d / "trials.jsonl").write_text('{"name": "a", "accuracy": 1}\n')
    with pytest.raises(RunDirError, match="size_bytes"):
        load_run(d)
    (d / "trials.jsonl").write_text("\n")
    with pytest.raises(RunDirError, match="no trial"):
        load_run(d)
    (d / "trials.jsonl").write_text(good)
    Policy.uniform(["ghost"], W, A8).save(d / "policy.yaml")
    with pytest.raises(RunDirError, match="ghost"):
        load_run(d)
    (d / "run.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(RunDirError, match="bitsmith.run/1"):
        load_run(d)


def test_pareto_front():
    sizes = [10, 20, 20, 30, 5, 40]
    accs = [80, 85, 90, 89, 50, 95]
    assert pareto_front(sizes, accs) == [4, 0, 2, 5]
    assert pareto_front([], []) == []
    with pytest.raises(ValueError, match="2 sizes but 1"):
        pareto_front([1, 2], [3])


def test_report_charges_actual_masks_of_sparse_layers(tmp_path, table):
    """A sparse policy's report uses the survivors' stored masks (masks.json), so its sizes
    equal the cost model with the same masks, not the nominal-sparsity estimate."""
    from bitsmith.cost.sparse import mask_layout
    from bitsmith.report.summary import build_summary

    d = tmp_path / "r"
    run = make_run(d, table, sensitivity=False, extras=False)
    from bitsmith.policy import LayerSpec

    name = table.names[0]
    sparse = Policy.uniform(table.names, W, A8).with_layers(
        {name: LayerSpec(weight=W, act=A8, sparsity=0.9)})
    keep = np.zeros(table[name].weight_params, dtype=bool)
    keep[:5] = True  # 5 clustered survivors: a relative index is much smaller than the bitmask
    layouts = {name: mask_layout(keep)}
    assert layouts[name].kind == "index"
    run.add_trial("sparse", policy=sparse, accuracy=80.0,
                  size_bytes=estimate(table, sparse, masks=layouts).size_bytes)
    run.choose("sparse")
    run.write_masks(layouts)
    data = load_run(d)
    assert data.masks == layouts
    summary = build_summary(data)
    assert summary["cost"]["size_bytes"] == data.chosen["size_bytes"]
    assert summary["cost"]["size_bytes"] < estimate(table, sparse).size_bytes
    (d / "masks.json").write_text(json.dumps({"layers": {"ghost": layouts[name].__dict__}}))
    with pytest.raises(RunDirError, match="ghost"):
        load_run(d)
    (d / "masks.json").write_text(json.dumps({"layers": {name: {"total": 1}}}))
    with pytest.raises(RunDirError, match="bad mask layout"):
        load_run(d)


# -------------------------------------------------------------------- report
def test_write_report_outputs(tmp_path, table):
    d = tmp_path / "r"
    make_run(d, table)
    html_path = write_report(d)
    html = html_path.read_text()
    assert html_path == d / "report.html"
    assert html.count("data:image/png;base64,") == 4  # bits, sensitivity, pareto, search
    assert "http://" not in html and "https://" not in html  # opens offline
    assert all(n in html for n in table.names) and "onnx-qdq" in html
    assert '<tr class="chosen">' in html
    md = (d / "report.md").read_text()
    assert "| mixed | ilp | 88.50 |" in md and "report_files/pareto.png" in md
    assert all((d / "report_files" / f"{f}.png").is_file()
               for f in ("bits", "pareto", "sensitivity", "search"))
    summary = json.loads((d / "report.json").read_text())
    assert summary["chosen"]["name"] == "mixed"
    # every trial is Pareto-optimal here (more bytes always bought accuracy); file order
    assert [t["name"] for t in summary["trials"] if t["pareto"]] == ["FP32", "W8A8", "W4A8",
                                                                     "W2A8", "mixed"]
    assert [summary["trials"][i]["name"] for i in summary["pareto"]][0] == "W2A8"  # by size
    fc = next(r for r in summary["layers"] if r["name"] == "fc")
    assert fc["weight_bits"] == 8 and fc["sensitivity"] == 0.0


def test_write_report_without_optional_files(tmp_path, table):
    d = tmp_path / "r"
    make_run(d, table, sensitivity=False, extras=False)
    html = write_report(d).read_text()
    assert html.count("data:image/png;base64,") == 2  # bits and Pareto only
    assert "Search curves" not in html and "Export" not in html
    assert "Per-layer sensitivity" not in html


@pytest.mark.skipif(_chromium() is None, reason="no chromium binary installed")
def test_report_renders_in_headless_chromium(tmp_path, table):
    from PIL import Image

    d = tmp_path / "r"
    make_run(d, table)
    page = write_report(d)
    shot = tmp_path / "shot.png"
    cmd = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
           "--no-first-run", "--disable-background-networking", "--disable-component-update",
           "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}",
           f"--screenshot={shot}", "--window-size=1200,2000", page.resolve().as_uri()]
    subprocess.run(cmd, capture_output=True, timeout=60, check=False)
    assert shot.is_file() and shot.stat().st_size > 0
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=np.float64)
    assert pixels.shape == (2000, 1200)
    assert pixels.std() > 10.0  # text, tables and plots, not a blank page
    assert (pixels < 128).mean() > 0.01  # a real amount of dark ink


# ----------------------------------------------------------------------- CLI
@pytest.fixture
def cli() -> typer.Typer:
    from bitsmith.cli import app

    return app


def test_cli_report(tmp_path, table, cli):
    runner = CliRunner()
    missing = runner.invoke(cli, ["report", str(tmp_path / "nope")])
    assert missing.exit_code == 2 and "does not exist" in flat(missing.output)
    d = tmp_path / "r"
    make_run(d, table, extras=False)
    (d / "layers.json").unlink()
    incomplete = runner.invoke(cli, ["report", str(d)])
    assert incomplete.exit_code == 2 and "missing layers.json" in flat(incomplete.output)
    make_run(d, table, extras=False)
    ok = runner.invoke(cli, ["report", str(d)])
    assert ok.exit_code == 0, ok.output
    assert (d / "report.html").is_file()


def test_cli_analyze_digits_end_to_end(tmp_path, cli):
    out = tmp_path / "a"
    res = CliRunner().invoke(cli, ["analyze", "--model", "digits", "--out", str(out),
                                   "--epochs", "1", "--bits", "2,8", "--methods", "measured",
                                   "--avg-bits", "5", "--validation-size", "100"])
    assert res.exit_code == 0, res.output
    data = load_run(out)
    names = [t["name"] for t in data.trials]
    assert names[0] == "FP32" and data.chosen["name"].startswith("ILP 5-bit")
    assert data.chosen["size_bytes"] <= estimate(
        data.table, Policy.uniform(data.table.names, W.replace(bits=5), A8)).size_bytes
    assert "measured_kl" in data.sensitivity.metrics
    assert (out / "report.html").is_file()


def test_cli_analyze_bad_input(tmp_path, cli):
    runner = CliRunner()
    unknown = runner.invoke(cli, ["analyze", "--model", "nope", "--out", str(tmp_path / "x")])
    assert unknown.exit_code == 2 and "unknown model 'nope'" in flat(unknown.output)
    tight = runner.invoke(cli, ["analyze", "--model", "digits", "--out", str(tmp_path / "y"),
                                "--epochs", "1", "--bits", "4,8", "--methods", "measured",
                                "--avg-bits", "2"])
    assert tight.exit_code == 3 and "minimum reachable size_bytes" in flat(tight.output)
    assert "measured sensitivity" not in tight.output  # checked before the expensive part
    badbits = runner.invoke(cli, ["analyze", "--model", "digits", "--bits", "four"])
    assert badbits.exit_code == 2 and "comma-separated" in flat(badbits.output)

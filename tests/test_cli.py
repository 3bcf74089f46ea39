from __future__ import annotations

import json

from bitsmith.cli import EXIT_BAD_INPUT, EXIT_OK, main


def test_demo_writes_results_and_config_is_overridden_by_flags(tmp_path, capsys):
    cfg = tmp_path / "cfg.yaml"
    out = tmp_path / "run"
    cfg.write_text(f"demo:\n  epochs: 1\n  out: {out}\n  seed: 3\n  tune_trials: 3\n")
    assert main(["--config", str(cfg), "demo", "--epochs", "4"]) == EXIT_OK
    results = json.loads((out / "results.json").read_text())
    names = [r["name"] for r in results["rows"]]
    assert names[:3] == ["FP32", "W8A8", "W4A4"] and names[3].startswith("mixed")
    fp32, w8a8 = results["rows"][0], results["rows"][1]
    assert w8a8["size_bytes"] < fp32["size_bytes"] / 3
    assert w8a8["bitops"] * 16 == fp32["bitops"]
    assert abs(w8a8["val_accuracy"] - fp32["val_accuracy"]) <= 2.0
    assert (out / "policy_mixed.yaml").is_file()
    # the chosen row is on the validation Pareto front: no row is smaller and more accurate
    chosen = next(r for r in results["rows"] if r["name"] == results["chosen"])
    assert not any(r["size_bytes"] <= chosen["size_bytes"]
                   and r["val_accuracy"] >= chosen["val_accuracy"]
                   and (r["size_bytes"], r["val_accuracy"]) != (chosen["size_bytes"],
                                                                chosen["val_accuracy"])
                   for r in results["rows"])
    assert "validation split" in results["rule"]
    # the short auto-tune ran (3 trials) and the run directory feeds the HTML report
    # tune_trials from the config file: 3 trials (a pruned one is in trials.csv only)
    assert len((out / "tune" / "trials.csv").read_text().splitlines()) == 1 + 3
    trials = [json.loads(line) for line in (out / "trials.jsonl").read_text().splitlines()]
    assert [t["name"] for t in trials] == names
    assert (out / "report.html").is_file() and (out / "policy.yaml").is_file()
    printed = capsys.readouterr().out
    assert "W8A8" in printed and "report written to" in printed and "rule:" in printed
    html = (out / "report.html").read_text()
    assert "rule:" in html and "(validation)" in html and "(test)" in html


def test_exit_codes_for_bad_input(tmp_path, capsys):
    assert main(["layers", "--model", "no_such_model"]) == EXIT_BAD_INPUT
    assert "unknown model" in capsys.readouterr().err
    assert main(["demo", "--epochs", "0"]) == EXIT_BAD_INPUT
    assert main(["--config", str(tmp_path / "missing.yaml"), "demo"]) == EXIT_BAD_INPUT
    bad = tmp_path / "bad.yaml"
    bad.write_text("demo: 3\n")
    assert main(["--config", str(bad), "demo"]) == EXIT_BAD_INPUT
    assert "must map command names" in capsys.readouterr().err


def test_layers_and_schemes_commands(capsys):
    assert main(["layers", "--model", "resnet20"]) == EXIT_OK
    out = capsys.readouterr().out
    assert "layer1.0.conv1" in out and "BatchNorm folded: 19" in out
    assert main(["schemes"]) == EXIT_OK
    assert "mu_l2q" in capsys.readouterr().out


TOKEN_MODEL = """
from torch import nn

def build():
    return nn.Sequential(nn.Embedding(50, 8), nn.Flatten(), nn.Linear(8 * 6, 4))
"""


def test_layers_of_a_token_id_model_run_on_its_data(tmp_path, capsys):
    """A model that takes int64 token ids runs on the first input of --data; without data
    the random float image it cannot take is an exit-2 line, not a traceback."""
    import numpy as np

    (tmp_path / "tok.py").write_text(TOKEN_MODEL)
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "tok.npz", x=rng.integers(0, 50, (40, 6)), y=rng.integers(0, 4, 40))
    model = str(tmp_path / "tok.py") + ":build"
    assert main(["layers", "--model", model, "--data", str(tmp_path / "tok.npz")]) == EXIT_OK
    assert "Linear" in capsys.readouterr().out
    assert main(["layers", "--model", model]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "random float image of shape (1, 3, 32, 32)" in err and "--data" in err


# ------------------------------------------------------------------ the error boundary
def test_errors_are_one_line_on_stderr_and_debug_shows_the_traceback(capsys):
    assert main(["layers", "--model", "nope"]) == EXIT_BAD_INPUT
    out = capsys.readouterr()
    lines = [line for line in out.err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: unknown model 'nope'")
    assert "Traceback" not in out.err and out.out == ""
    assert main(["--debug", "layers", "--model", "nope"]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "unknown model 'nope'" in err


def test_unexpected_errors_exit_1_and_interrupts_130(capsys, monkeypatch):
    import bitsmith.schemes

    def broken() -> list[str]:
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(bitsmith.schemes, "available", broken)
    assert main(["schemes"]) == 1
    err = capsys.readouterr().err
    assert "unexpected error: ZeroDivisionError: division by zero" in err
    assert "--debug" in err and "Traceback" not in err

    def interrupted() -> list[str]:
        raise KeyboardInterrupt

    monkeypatch.setattr(bitsmith.schemes, "available", interrupted)
    assert main(["schemes"]) == 130
    assert "run the same command again to resume" in capsys.readouterr().err


# ------------------------------------------------------------ progress off a terminal
def test_progress_off_a_terminal_prints_a_line_per_trial_with_elapsed_time(tmp_path, capsys):
    assert main(["tune", "--model", "digits", "--epochs", "1", "--n-trials", "2",
                 "--strategy", "random", "--out", str(tmp_path), "--tolerance", "3"]) == EXIT_OK
    err = capsys.readouterr().err
    assert "loading digits: done in" in err
    assert "tune: 1/2 trials finished" in err and "tune: 2/2 trials finished" in err
    assert all("elapsed" in line or "done in" in line for line in err.splitlines()
               if line.startswith(("tune:", "loading")))


def test_heartbeat_lines_cover_a_long_step(capsys):
    import time

    from bitsmith.progress import ProgressBar, Stages

    with Stages("export", every=0.05) as step:
        step("timing")
        time.sleep(0.3)
    with ProgressBar("train", 10, unit="steps", every=0.05) as bar:
        bar.update(3, "loss 0.5")
        time.sleep(0.3)
    err = capsys.readouterr().err
    assert err.count("export: still timing") >= 2 and "export: timing done in" in err
    assert err.count("train: 3/10 (30%) steps") >= 2 and "elapsed, loss 0.5" in err


def test_library_log_lines_reach_stderr_off_a_terminal(monkeypatch, capsys):
    """Reconstruction reports each layer / block through logging; the CLI shows it."""
    import logging

    from bitsmith.progress import show_library_log

    monkeypatch.setenv("BITSMITH_PROGRESS", "plain")
    show_library_log()
    show_library_log()  # idempotent: one line per record, not two
    logging.getLogger("bitsmith.reconstruct").info("reconstruct 1/3 conv1: loss 2 -> 1")
    logging.getLogger("elsewhere").info("not ours")
    err = capsys.readouterr().err
    assert err.count("reconstruct 1/3 conv1: loss 2 -> 1") == 1 and "not ours" not in err


def test_demo_automatic_result_is_not_dominated_by_the_hand_written_policy(tmp_path):
    """Issue 14: at the README's default settings, autoquantize's row is on the demo table's
    validation front: no hand-written policy is at least as accurate AND at least as small."""
    from bitsmith.demo import run_demo

    run = run_demo(tmp_path / "demo")
    rows = {r.name: r for r in run.rows}
    auto = rows.pop("autoquantize")
    for other in rows.values():
        dominated = (other.val_accuracy >= auto.val_accuracy
                     and other.size_bytes <= auto.size_bytes
                     and (other.val_accuracy > auto.val_accuracy
                          or other.size_bytes < auto.size_bytes))
        assert not dominated, f"{other.name} dominates autoquantize: {other} vs {auto}"
    assert run.rule and "validation" in run.rule

"""``bitsmith compress``: help with examples, clear errors and exit codes for bad input."""

from __future__ import annotations

import pytest

from bitsmith.cli import main


def test_help_lists_examples(capsys):
    assert main(["compress", "--help"]) == 0
    out = capsys.readouterr().out
    assert "Examples" in out and "bitsmith compress --sparsity 0.75 --ratio 15" in out
    assert "--budget-kib" in out and "--resume" in out


@pytest.mark.parametrize("args, needle", [
    (["--sparsity", "1.5"], "sparsity=1.5 is out of range"),
    (["--sparsity", "1"], "sparsity=1.0 is out of range"),
    (["--sparsity", "-0.2"], "sparsity=-0.2 is out of range"),
    (["--ratio", "0"], "ratio=0.0 is not a valid compression target"),
    (["--ratio", "0.5"], "ratio=0.5 is not a valid compression target"),
    (["--budget-kib", "-3"], "--budget-kib must be a positive size"),
    (["--bits", "2,x"], "--bits must be comma-separated integers"),
    (["--bits", "1,4"], "candidate bit widths must lie in 2..8"),
    (["--model", "vgg"], "unknown model 'vgg'"),
])
def test_bad_values_exit_2_with_a_clear_message(capsys, args, needle):
    assert main(["compress", *args]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert needle in err


def test_infeasible_budget_exits_3_before_training(capsys, tmp_path):
    code = main(["compress", "--sparsity", "0.2", "--ratio", "200", "--epochs", "0",
                 "--out", str(tmp_path)])
    assert code == 3
    err = " ".join(capsys.readouterr().err.split())
    assert "infeasible size_bytes budget" in err and "bytes" in err

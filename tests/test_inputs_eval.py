"""Evaluation protocol (bitsmith.evaluate, metric specs) and the workload registry."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from user_inputs import make_image_folder, write_user_model

import bitsmith
from bitsmith.engine import evaluate as engine_evaluate
from bitsmith.inputs import (
    DataSpecError,
    Evaluate,
    MetricError,
    Workload,
    load_workload,
    resolve_metric,
)


def _problem(n: int = 64, classes: int = 6):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, classes))
    x = torch.randn(n, 8)
    y = torch.randint(0, classes, (n,))
    return model, x, y


def test_builtin_metrics_use_the_one_loop() -> None:
    model, x, y = _problem()
    loader = DataLoader(TensorDataset(x, y), batch_size=16)
    ref = engine_evaluate(model, loader)
    assert bitsmith.evaluate(model, loader) == ref.accuracy
    assert bitsmith.evaluate(model, (x, y), metric="top5") == ref.top5
    assert bitsmith.evaluate(model, TensorDataset(x, y), metric="neg_loss") == pytest.approx(
        -ref.loss)
    with torch.no_grad():
        logits = model(x)
    assert ref.accuracy == pytest.approx(100 * (logits.argmax(1) == y).float().mean().item())
    top5 = (logits.topk(5, 1).indices == y[:, None]).any(1).float().mean().item()
    assert ref.top5 == pytest.approx(100 * top5)
    model.train()
    bitsmith.evaluate(model, loader)
    assert model.training  # mode restored


def test_user_metrics(tmp_path: Path) -> None:
    model, x, y = _problem()
    loader = DataLoader(TensorDataset(x, y), batch_size=16)

    def mse(m, data):
        return -sum(float(((m(a) - 0.0) ** 2).mean()) for a, _ in data)

    def own_data(m):
        return torch.tensor(0.5)

    assert bitsmith.evaluate(model, loader, metric=mse) < 0
    assert bitsmith.evaluate(model, loader, metric=own_data) == 0.5
    (tmp_path / "metrics.py").write_text(
        "import math\n\n"
        "def score(model, data):\n    return 42\n\n"
        "def model_only(model):\n    return 1.5\n\n"
        "def broken(model, data):\n    return 1 / 0\n\n"
        "def text(model):\n    return 'high'\n\n"
        "def nan(model):\n    return math.nan\n\n"
        "def vector(model):\n    import torch\n    return torch.ones(3)\n")
    f = tmp_path / "metrics.py"
    assert bitsmith.evaluate(model, loader, metric=f"{f}:score") == 42.0
    ev = resolve_metric(f"{f}:model_only").evaluator()
    assert isinstance(ev, Evaluate) and ev(model) == 1.5 and ev.name.endswith(":model_only")
    with pytest.raises(MetricError, match=r"raised ZeroDivisionError: division by zero "
                                          r"\(metrics.py line 10\); fix the metric function"):
        bitsmith.evaluate(model, loader, metric=f"{f}:broken")
    with pytest.raises(MetricError, match=r"returned 'high', not a number"):
        bitsmith.evaluate(model, loader, metric=f"{f}:text")
    with pytest.raises(MetricError, match="returned nan; return a finite number"):
        bitsmith.evaluate(model, loader, metric=f"{f}:nan")
    with pytest.raises(MetricError, match="returned Tensor, not a number"):
        bitsmith.evaluate(model, loader, metric=f"{f}:vector")
    with pytest.raises(MetricError, match="has no attribute 'scroe'"):
        resolve_metric(f"{f}:scroe")
    with pytest.raises(MetricError, match="unknown metric 'top3'"):
        resolve_metric("top3")
    assert resolve_metric("top1").needs_labels and not resolve_metric(mse).needs_labels


def test_builtin_metric_on_unlabelled_data() -> None:
    model, x, _ = _problem()
    with pytest.raises(MetricError, match="needs labelled batches"):
        bitsmith.evaluate(model, x)
    with pytest.raises(MetricError, match="at least 5 classes"):
        bitsmith.evaluate(nn.Linear(8, 3), (x, torch.zeros(len(x), dtype=torch.long)), "top5")
    with pytest.raises(MetricError, match="needs data"):
        resolve_metric("top1").evaluator()


# ----------------------------------------------------------------- workloads
@pytest.fixture
def user_setup(tmp_path: Path):
    net = write_user_model(tmp_path, "net.py")
    from bitsmith.inputs import resolve_model

    torch.save({"state_dict": resolve_model(f"{net}:build", model_kwargs="num_classes=3")
                .state_dict()}, tmp_path / "ck.pt")
    folder = make_image_folder(tmp_path / "shapes", per_class=5, size=8)
    return net, tmp_path / "ck.pt", folder


def test_user_workload(user_setup) -> None:
    net, ck, folder = user_setup
    work = load_workload(f"{net}:build", str(folder), checkpoint=ck,
                         model_kwargs={"num_classes": 3}, batch_size=4)
    assert isinstance(work, Workload) and not work.model.training
    assert work.data.info["validation"].size == 6
    assert 0.0 <= work.evaluate(work.model) <= 100.0
    assert work.evaluate(work.model) == bitsmith.evaluate(work.model, work.validation)
    assert next(iter(work.calibration))[0].shape == (3, 3, 8, 8)
    assert work.val is work.validation and work.test is not None
    assert work.dataset == str(folder) and "split rule" in work.eval_set
    summary = work.describe()
    assert json.loads(json.dumps(summary))["model"] == f"{net}:build + checkpoint ck.pt"
    assert summary["checkpoint"]["sha256"] == hashlib.sha256(ck.read_bytes()).hexdigest()
    with pytest.raises(DataSpecError, match="expects 3 channels and gets 1"):
        load_workload(f"{net}:build", str(folder), checkpoint=ck, model_kwargs="num_classes=3",
                      channels=1)
    with pytest.raises(DataSpecError, match="outputs 3 scores per input but .* has 4 classes"):
        make_image_folder(folder, per_class=5, size=8, classes=("circle", "square", "triangle",
                                                                  "zigzag"))
        load_workload(f"{net}:build", str(folder), checkpoint=ck, model_kwargs="num_classes=3")
    with pytest.raises(DataSpecError, match="give its data"):
        load_workload(f"{net}:build", checkpoint=ck, model_kwargs="num_classes=3")


def test_workload_with_metric_on_unlabelled_data(user_setup, tmp_path: Path) -> None:
    net, ck, _ = user_setup
    flat = tmp_path / "flat"
    flat.mkdir()
    from PIL import Image

    for i in range(15):
        Image.fromarray(np.full((8, 8, 3), i * 9, np.uint8)).save(flat / f"{i:02d}.png")
    (tmp_path / "m.py").write_text(
        "def confidence(model, data):\n"
        "    import torch\n"
        "    return float(torch.cat([model(x).softmax(1).max(1).values for x in data]).mean())\n")
    work = load_workload(f"{net}:build", str(flat), checkpoint=ck, model_kwargs="num_classes=3",
                         metric=f"{tmp_path / 'm.py'}:confidence")
    score = work.evaluate(work.model)
    assert 1 / 3 <= score <= 1 and math.isfinite(score)
    with pytest.raises(DataSpecError, match="has no labels"):
        load_workload(f"{net}:build", str(flat), checkpoint=ck, model_kwargs="num_classes=3")


def test_builtin_digits_workload() -> None:
    work = load_workload("digits", validation_size=100, epochs=1)
    assert work.name == "digits" and work.data.info["validation"].size == 100
    assert work.dataset == "sklearn digits" and "test split" in work.eval_set
    again = load_workload("digits", epochs=1)
    assert again.model is not work.model  # memoised training, fresh copies
    assert all(torch.equal(a, b) for a, b in zip(again.model.state_dict().values(),
                                                 work.model.state_dict().values()))
    cal = {tuple(x.flatten().tolist()) for x, _ in work.data.calibration}
    assert not cal & {tuple(x.flatten().tolist()) for x, _ in work.data.validation}


def test_cifar_resnet_checkpoint_defaults_to_cifar10(tmp_path: Path) -> None:
    from bitsmith.data.paths import find_data_file

    try:
        path = find_data_file("models/akamaster_resnet_cifar10", "resnet20-*.th")
    except FileNotFoundError:
        pytest.skip("shared data not available")
    work = load_workload("resnet20", checkpoint=path, validation_size=100, check_input=False)
    assert work.dataset == "CIFAR-10" and "pretrained" not in work.model_description
    assert work.data.info["validation"].size == 100

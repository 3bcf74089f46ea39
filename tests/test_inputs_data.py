"""Data input: every spec form of resolve_data, the split rule, overlap refusal, bad input."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from user_inputs import CLASSES, make_image_folder

from bitsmith.data.datasets import ArrayImageDataset, InputDataset
from bitsmith.errors import InputError
from bitsmith.inputs import DataSpecError, DataSplits, check_model_input, resolve_data
from bitsmith.inputs.folder import image_transform, scan_image_folder
from bitsmith.inputs.splits import apportion, split_indices


def _paths(ds) -> list[str]:
    return [f"{p.parent.name}/{p.name}" for p in ds.paths]


# ----------------------------------------------------------------- image folders
def test_image_folder_split_rule_is_stratified_and_described(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "shapes")
    data = resolve_data(str(root))
    assert isinstance(data, DataSplits)
    assert {r: data.info[r].size for r in ("calibration", "validation", "test")} == \
        {"calibration": 6, "validation": 12, "test": 12}
    for role, per_class in (("calibration", 2), ("validation", 4), ("test", 4)):
        counts = Counter(p.parent.name for p in data.get(role).paths)
        assert counts == dict.fromkeys(CLASSES, per_class), role
        assert data.labelled(role)
    x, y = data.calibration[0]
    assert x.shape == (3, 12, 12) and x.dtype == torch.float32 and 0 <= int(y) < 3
    assert data.classes == CLASSES
    assert data.train is data.calibration  # fine-tuning defaults to the calibration data
    desc = data.describe()
    assert "split rule" in desc["validation"]["description"] and "stratified" in desc["rule"]
    assert desc["validation"]["size"] == 12
    batch = next(iter(data.loader("validation", 5)))
    assert batch[0].shape == (5, 3, 12, 12)


def test_split_is_deterministic_and_seeded(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "shapes")
    a, b = resolve_data(root), resolve_data(str(root))
    c = resolve_data(root, seed=1)
    for role in ("calibration", "validation", "test"):
        assert _paths(a.get(role)) == _paths(b.get(role))
    assert _paths(a.validation) != _paths(c.validation)
    idx = split_indices(100, [0.2, 0.4, 0.4], labels=[i % 4 for i in range(100)], seed=3)
    again = split_indices(100, [0.2, 0.4, 0.4], labels=[i % 4 for i in range(100)], seed=3)
    assert all(np.array_equal(p, q) for p, q in zip(idx, again))
    assert sorted(np.concatenate(idx).tolist()) == list(range(100))
    assert [len(p) for p in idx] == [20, 40, 40]
    assert apportion(7, [0.2, 0.4, 0.4]) == [1, 3, 3] and sum(apportion(11, [1, 1, 1])) == 11
    # the order is shuffled, so a prefix covers several classes
    assert len({int(a.validation[i][1]) for i in range(4)}) > 1


def test_split_fractions_and_explicit_roles(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "shapes")
    data = resolve_data(root, split="0.5,0.5,0")
    assert data.test is None and data.info["calibration"].size == 15
    other = make_image_folder(tmp_path / "other", per_class=4, seed=1)
    data = resolve_data(root, test=other)  # the source is cut into calibration + validation
    assert data.info["test"].size == 12 and data.info["test"].source == str(other)
    assert data.info["calibration"].size == 10 and data.info["validation"].size == 20
    data = resolve_data(calibration=root, validation=other)
    assert data.test is None and data.info["calibration"].size == 30
    capped = resolve_data(root, calibration_size=3, validation_size=6)
    assert Counter(p.parent.name for p in capped.calibration.paths) == dict.fromkeys(CLASSES, 1)
    assert Counter(p.parent.name for p in capped.validation.paths) == dict.fromkeys(CLASSES, 2)
    assert capped.info["validation"].size == 6 and "stratified" in \
        capped.info["validation"].description
    with pytest.raises(DataSpecError, match="three fractions"):
        resolve_data(root, split="0.5,0.5")
    with pytest.raises(DataSpecError, match="not used"):
        resolve_data(root, calibration=other, validation=other, test=other)


def test_split_folders_layout(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    make_image_folder(root / "train", per_class=4)
    make_image_folder(root / "val", per_class=3, seed=1)
    make_image_folder(root / "test", per_class=2, seed=2)
    data = resolve_data(root)
    assert [data.info[r].size for r in ("calibration", "validation", "test")] == [12, 9, 6]
    assert "train/ = calibration" in data.rule
    (root / "val").rename(tmp_path / "moved")
    data = resolve_data(root)  # no val/: validation is half of test/
    assert data.info["validation"].size == 3 and data.info["test"].size == 3
    assert data.info["calibration"].size == 12 and "training images hide drops" in data.rule


def test_presets_size_and_channels(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "shapes", per_class=4, size=20)
    data = resolve_data(root, preset="cifar10")
    x, _ = data.calibration[0]
    assert x.shape == (3, 32, 32)
    gray = resolve_data(root, preset="mnist")
    assert gray.calibration[0][0].shape == (1, 28, 28)
    crop = resolve_data(root, preset="imagenet", image_size=16, resize=18)
    assert crop.calibration[0][0].shape == (3, 16, 16)
    one = resolve_data(root, channels=1, image_size=(10, 14), mean=0.5, std=0.25)
    x = one.calibration[0][0]
    assert x.shape == (1, 10, 14) and x.min() >= -2.0 and x.max() <= 2.0
    t = image_transform("cifar10")
    assert t.mean == (0.485, 0.456, 0.406) and t.size == (32, 32)
    with pytest.raises(DataSpecError, match="unknown image preset"):
        image_transform("svhn")
    with pytest.raises(DataSpecError, match="3-channel mean"):
        image_transform("cifar10", channels=1)
    with pytest.raises(DataSpecError, match="2 values for 3 channel"):
        image_transform(mean=(0.5, 0.5))
    with pytest.raises(DataSpecError, match="fixed preprocessing"):
        resolve_data("digits", preset="cifar10")


def test_bad_folders(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataSpecError, match="holds no images.*<class name>/<image>"):
        resolve_data(tmp_path / "empty")
    with pytest.raises(DataSpecError, match="not found"):
        resolve_data(tmp_path / "missing")
    root = make_image_folder(tmp_path / "gap", per_class=3)
    (root / "empty_class").mkdir()
    with pytest.raises(DataSpecError, match="empty_class hold no images"):
        resolve_data(root)
    loose = make_image_folder(tmp_path / "loose", per_class=3)
    Image.new("RGB", (12, 12)).save(loose / "stray.png")
    with pytest.raises(DataSpecError, match="loose images.*stray.png"):
        resolve_data(loose)
    broken = make_image_folder(tmp_path / "broken", per_class=3)
    (broken / "square" / "001.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(DataSpecError, match=r"image '.*square/001.png' cannot be read"):
        resolve_data(broken)
    mixed = make_image_folder(tmp_path / "mixed", per_class=3)
    Image.new("RGB", (20, 20)).save(mixed / "circle" / "big.png")
    with pytest.raises(DataSpecError, match=r"is 20x20 but .* is 12x12.*--image-size"):
        resolve_data(mixed)
    assert len(resolve_data(mixed, image_size=12).calibration) == 2  # resized: accepted


def test_unlabelled_folder(tmp_path: Path) -> None:
    flat = tmp_path / "flat"
    flat.mkdir()
    for i in range(12):
        Image.fromarray(np.full((8, 8, 3), i, np.uint8)).save(flat / f"{i}.png")
    scan = scan_image_folder(flat)
    assert not scan.labelled and len(scan.paths) == 12
    with pytest.raises(DataSpecError, match="has no labels.*<class>/<image>.*--metric"):
        resolve_data(flat)
    data = resolve_data(flat, require_labels=False)
    assert not data.labelled("validation") and isinstance(data.validation[0], torch.Tensor)
    labelled = make_image_folder(tmp_path / "lab", per_class=3, size=8)
    data = resolve_data(calibration=flat, validation=labelled)
    assert not data.labelled("calibration") and data.labelled("validation")


# ----------------------------------------------------------------- tensors files
def test_tensor_files(tmp_path: Path) -> None:
    x = torch.randn(40, 2, 5, 5)
    y = torch.arange(40) % 4
    np.savez(tmp_path / "xy.npz", x=x.numpy(), y=y.numpy())
    data = resolve_data(tmp_path / "xy.npz")
    assert isinstance(data.calibration, InputDataset) and data.labelled("test")
    assert data.info["calibration"].size == 8
    assert Counter(int(t) for t in data.validation.targets) == {0: 4, 1: 4, 2: 4, 3: 4}
    save_file({"x": x, "y": y}, str(tmp_path / "xy.safetensors"))
    st = resolve_data(str(tmp_path / "xy.safetensors"))
    assert torch.equal(st.validation.inputs, data.validation.inputs)  # same rule, same items
    np.savez(tmp_path / "x_only.npz", x=x.numpy())
    with pytest.raises(DataSpecError, match="has no labels"):
        resolve_data(tmp_path / "x_only.npz")
    assert not resolve_data(tmp_path / "x_only.npz", require_labels=False).labelled("test")
    imgs = np.random.default_rng(0).integers(0, 256, (30, 6, 6, 3), dtype=np.uint8)
    np.savez(tmp_path / "images.npz", images=imgs, labels=np.arange(30) % 3)
    img = resolve_data(tmp_path / "images.npz", preset="cifar10")
    assert isinstance(img.calibration, ArrayImageDataset)
    assert img.calibration[0][0].shape == (3, 6, 6)
    ids = torch.randint(0, 100, (20, 7))
    np.savez(tmp_path / "tokens.npz", x=ids.numpy(), y=(torch.arange(20) % 2).numpy())
    assert resolve_data(tmp_path / "tokens.npz").calibration[0][0].dtype == torch.int64


def test_bad_tensor_files(tmp_path: Path) -> None:
    np.savez(tmp_path / "wrong.npz", inputs=np.zeros((4, 2)), targets=np.zeros(4))
    with pytest.raises(DataSpecError, match=r"no array 'x' \(it has: inputs, targets\)"):
        resolve_data(tmp_path / "wrong.npz")
    np.savez(tmp_path / "len.npz", x=np.zeros((4, 2)), y=np.zeros(3, np.int64))
    with pytest.raises(DataSpecError, match="x has 4 items but y has 3"):
        resolve_data(tmp_path / "len.npz")
    np.savez(tmp_path / "obj.npz", x=np.array([{"a": 1}], dtype=object))
    with pytest.raises(DataSpecError, match="pickled objects"):
        resolve_data(tmp_path / "obj.npz")
    (tmp_path / "cut.npz").write_bytes((tmp_path / "len.npz").read_bytes()[:40])
    with pytest.raises(DataSpecError, match="truncated or corrupt"):
        resolve_data(tmp_path / "cut.npz")
    save_file({"x": torch.zeros(4, 2)}, str(tmp_path / "a.safetensors"))
    raw = (tmp_path / "a.safetensors").read_bytes()
    (tmp_path / "b.safetensors").write_bytes(raw[:-4])
    with pytest.raises(DataSpecError, match="data file .* is truncated"):
        resolve_data(tmp_path / "b.safetensors", require_labels=False)
    np.savez(tmp_path / "float.npz", x=np.zeros((6, 2), np.float32), y=np.arange(6))
    with pytest.raises(DataSpecError, match="uint8 images only"):
        resolve_data(tmp_path / "float.npz", mean=0.5)
    np.savez(tmp_path / "tiny.npz", x=np.zeros((2, 2), np.float32), y=np.arange(2))
    with pytest.raises(DataSpecError, match="only 2 item"):
        resolve_data(tmp_path / "tiny.npz")
    with pytest.raises(DataSpecError, match="not found: not a built-in"):
        resolve_data("cifar100")


# ----------------------------------------------------------------- factories, objects
FACTORY = '''
import torch
from torch.utils.data import TensorDataset


def make_data(n=30, offset=0.0):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 3, 4, 4, generator=g) + offset
    return TensorDataset(x, torch.arange(n) % 3)


def make_splits():
    a, b = make_data(12), make_data(9, offset=5.0)
    return {"calibration": a, "val": b}


def make_tuple():
    return make_data(12), make_data(9, offset=5.0), make_data(6, offset=9.0)


def broken():
    raise RuntimeError("disk on fire")
'''


def test_data_factories_and_objects(tmp_path: Path) -> None:
    (tmp_path / "mydata.py").write_text(FACTORY)
    f = tmp_path / "mydata.py"
    data = resolve_data(f"{f}:make_data", data_kwargs="n=50")
    assert sum(data.info[r].size for r in ("calibration", "validation", "test")) == 50
    data = resolve_data(f"{f}:make_splits")
    assert data.info["validation"].size == 9 and data.test is None
    data = resolve_data(f"{f}:make_tuple")
    assert data.info["test"].size == 6
    with pytest.raises(DataSpecError, match=r"data factory .* raised RuntimeError: disk on fire"):
        resolve_data(f"{f}:broken")
    with pytest.raises(DataSpecError, match="'nofile.py' not found"):
        resolve_data("nofile.py:make_data")
    x, y = torch.randn(20, 3), torch.arange(20) % 2
    data = resolve_data((x, y))
    assert data.info["test"].size == 8
    loaders = resolve_data(calibration=DataLoader(TensorDataset(x[:10], y[:10]), batch_size=4),
                           validation=DataLoader(TensorDataset(x[10:], y[10:]), batch_size=4))
    assert isinstance(loaders.loader("validation"), DataLoader)


# ----------------------------------------------------------------- overlap refusal
def test_overlapping_splits_are_refused(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "shapes", per_class=4)
    with pytest.raises(DataSpecError, match=r"calibration data .* and the validation data .* "
                                            r"share 12 item\(s\).*disjoint"):
        resolve_data(calibration=root, validation=root)
    dup = make_image_folder(tmp_path / "dup", per_class=4)  # same pixels, other paths
    with pytest.raises(DataSpecError, match="has the same content as"):
        resolve_data(calibration=root, validation=dup)
    x, y = torch.randn(20, 3), torch.arange(20) % 2
    np.savez(tmp_path / "a.npz", x=x[:12].numpy(), y=y[:12].numpy())
    np.savez(tmp_path / "b.npz", x=x[11:].numpy(), y=y[11:].numpy())  # shares row 11
    with pytest.raises(DataSpecError, match=r"share 1 item\(s\)"):
        resolve_data(calibration=tmp_path / "a.npz", validation=tmp_path / "b.npz")
    np.savez(tmp_path / "c.npz", x=x[12:].numpy(), y=y[12:].numpy())
    ok = resolve_data(calibration=tmp_path / "a.npz", validation=tmp_path / "c.npz")
    assert ok.info["validation"].size == 8
    same = TensorDataset(x, y)
    with pytest.raises(DataSpecError, match="same set"):
        resolve_data(calibration=same, validation=same)
    with pytest.raises(DataSpecError, match="test data .* share"):
        resolve_data(root, test=root)
    assert resolve_data(calibration=root, validation=root, check_overlap=False)


# ----------------------------------------------------------------- model / data check
def test_channel_and_class_checks(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "shapes", per_class=4, size=8)
    rgb_net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                            nn.Linear(4, 3))
    data = resolve_data(root)
    check_model_input(rgb_net, data)
    gray = resolve_data(root, channels=1)
    with pytest.raises(DataSpecError, match=r"expects 3 channels and gets 1.*--channels 3"):
        check_model_input(rgb_net, gray, model_name="model 'net.py:build'")
    with pytest.raises(DataSpecError, match="outputs 3 scores per input but .* has 5 classes"):
        check_model_input(rgb_net, data, num_classes=5)
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(10, 2))
    with pytest.raises(DataSpecError, match="expects 10 features and gets 192"):
        check_model_input(mlp, data.validation)
    late = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(5, 2))
    with pytest.raises(DataSpecError, match=r"fails on one input.*RuntimeError.*--image-size"):
        check_model_input(late, data.calibration)
    check_model_input(rgb_net, data.loader("validation", 4))
    assert issubclass(DataSpecError, InputError)


# ----------------------------------------------------------------- built-ins
def test_builtin_digits() -> None:
    data = resolve_data("digits", calibration_size=100)
    assert data.info["calibration"].size == 100 and len(data.calibration) == 100
    assert data.info["validation"].size == 360 and data.info["test"].size == 360
    assert data.train is not data.calibration and len(data.train) == 1077
    assert "digits" in data.info["test"].description


def test_builtin_cifar10_is_lazy_and_follows_the_protocol() -> None:
    from bitsmith.data.paths import data_root

    try:
        data_root("cifar10/cifar10_test_subset.npz")
    except FileNotFoundError:
        pytest.skip("shared data not available")
    data = resolve_data("cifar10", validation_size=200)
    assert data._splits["train"].__class__.__name__ == "_Lazy"  # not decoded
    assert data.info["train"].size == 45000
    assert data.info["validation"].size == 200 and "JPEG" in data.info["validation"].description
    assert len(data.test) == 1000 and "lossless" in data.info["test"].description
    assert len(data.validation) == 200 and data.info["calibration"].size == 4000
    with pytest.raises(DataSpecError, match="no calibration data"):
        resolve_data(None)

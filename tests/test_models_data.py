"""Tests for bitsmith.models and bitsmith.data (fast; reads ../shared/data, never downloads)."""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bitsmith.data import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    IDX_IMAGES_MAGIC,
    IDX_LABELS_MAGIC,
    ArrayImageDataset,
    cifar10_protocol,
    cifar10_test_subset,
    cifar10_train_subset,
    data_root,
    decode_cifar10_jpeg,
    digits_splits,
    jpeg_indices_of_train_subset,
    load_mnist_arrays,
    make_loader,
    mnist,
    random_crop_flip,
    read_idx,
)
from bitsmith.models import (
    PadShortcut,
    SmallCNN,
    available_models,
    build_model,
    cifar_resnet,
    load_pretrained_cifar_resnet,
    resnet20,
)

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
HAVE_DATA = SHARED.is_dir() or bool(os.environ.get("BITSMITH_DATA"))
needs_data = pytest.mark.skipif(not HAVE_DATA, reason=f"shared data folder absent ({SHARED})")


def n_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


# ----------------------------------------------------------------------------- models


@pytest.mark.parametrize("depth,count", [(20, 269_722), (32, 464_154), (44, 658_586),
                                         (56, 853_018)])
def test_resnet_param_counts(depth: int, count: int) -> None:
    assert n_params(cifar_resnet(depth)) == count
    assert n_params(build_model(f"resnet{depth}")) == count


def test_resnet_forward_shape_and_shortcut() -> None:
    m = resnet20().eval()
    assert m(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    sc = m.layer2[0].shortcut
    assert isinstance(sc, PadShortcut) and sc.stride == 2 and sc.pad == 8
    y = sc(torch.randn(2, 16, 32, 32))
    assert y.shape == (2, 32, 16, 16)
    assert torch.all(y[:, :8] == 0) and torch.all(y[:, 24:] == 0)
    assert n_params(sc) == 0
    with pytest.raises(ValueError, match="depth"):
        cifar_resnet(18)


def test_fx_trace_resnet20_and_smallcnn() -> None:
    for m, x in ((resnet20().eval(), torch.randn(2, 3, 32, 32)),
                 (SmallCNN().eval(), torch.randn(2, 1, 8, 8))):
        gm = torch.fx.symbolic_trace(m)
        torch.testing.assert_close(gm(x), m(x))
    gm = torch.fx.symbolic_trace(resnet20())
    targets = {n.target for n in gm.graph.nodes if n.op == "call_module"}
    assert "layer1.0.relu2" in targets and "linear" in targets and "avgpool" in targets
    # the option-A shortcut is traced through: two parameter-free F.pad calls, no opaque leaf
    pads = [n for n in gm.graph.nodes if n.op == "call_function" and n.target is F.pad]
    assert len(pads) == 2


def test_smallcnn_shapes() -> None:
    m = SmallCNN().eval()
    assert m(torch.randn(3, 1, 8, 8)).shape == (3, 10)
    assert m(torch.randn(3, 1, 28, 28)).shape == (3, 10)
    assert SmallCNN(in_channels=3, num_classes=5)(torch.randn(2, 3, 32, 32)).shape == (2, 5)


def test_smallcnn_trains_on_digits() -> None:
    torch.manual_seed(0)
    s = digits_splits(0)
    m = SmallCNN()
    opt = torch.optim.Adam(m.parameters(), 1e-2)
    x, y = s.train.tensors
    for _ in range(8):
        m.train()
        perm = torch.randperm(len(y))
        for i in range(0, len(y), 64):
            b = perm[i:i + 64]
            loss = F.cross_entropy(m(x[b]), y[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
    m.eval()
    xt, yt = s.test.tensors
    with torch.no_grad():
        acc = (m(xt).argmax(1) == yt).float().mean().item()
    assert acc >= 0.95


def test_registry() -> None:
    names = available_models(include_torchvision=False)
    for n in ("resnet20", "resnet32", "resnet44", "resnet56", "small_cnn"):
        assert n in names
    assert isinstance(build_model("small_cnn", width=8), SmallCNN)
    assert build_model("resnet20", num_classes=100).linear.out_features == 100
    with pytest.raises(KeyError, match="unknown model"):
        build_model("resnet999")


def test_registry_torchvision() -> None:
    pytest.importorskip("torchvision")
    assert "torchvision:resnet18" in available_models()
    m = build_model("torchvision:resnet18", num_classes=7)
    assert m.fc.out_features == 7
    with pytest.raises(KeyError):
        build_model("torchvision:not_a_model")


@needs_data
def test_pretrained_resnet20_strict_weights_only() -> None:
    from bitsmith.data.paths import find_data_file

    path = find_data_file("models/akamaster_resnet_cifar10", "resnet20-*.th")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    keys = {k.removeprefix("module.") for k in ckpt["state_dict"]}
    model_keys = {k for k in resnet20().state_dict() if not k.endswith("num_batches_tracked")}
    assert keys == model_keys
    m = load_pretrained_cifar_resnet(20)
    assert not m.training
    sd = ckpt["state_dict"]
    torch.testing.assert_close(m.conv1.weight, sd["module.conv1.weight"])
    torch.testing.assert_close(m.layer2[0].bn1.running_var, sd["module.layer2.0.bn1.running_var"])


@needs_data
def test_pretrained_resnet20_accuracy_first200() -> None:
    m = load_pretrained_cifar_resnet(20)
    x, y = cifar10_test_subset().tensors(range(200))
    with torch.no_grad():
        acc = (m(x).argmax(1) == y).float().mean().item()
    assert acc >= 0.88


@needs_data
def test_pretrained_missing_depth_and_bad_hash(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="resnet44"):
        load_pretrained_cifar_resnet(44)
    fake = tmp_path / "resnet20-00000000.th"
    fake.write_bytes(b"not a checkpoint")
    with pytest.raises(RuntimeError, match="SHA-256"):
        load_pretrained_cifar_resnet(20, path=fake)
    assert isinstance(build_model("resnet20", pretrained=True), torch.nn.Module)


# ----------------------------------------------------------------------------- digits


def test_digits_splits() -> None:
    a, b, c = digits_splits(0), digits_splits(0), digits_splits(1)
    assert a.sizes() == {"train": 1077, "val": 360, "test": 360}
    # deterministic for a seed, different for another seed
    for k in ("train", "val", "test"):
        assert torch.equal(a[k].tensors[0], b[k].tensors[0])
        assert np.array_equal(a.indices[k], b.indices[k])
    assert not np.array_equal(a.indices["test"], c.indices["test"])
    # disjoint, covering
    allix = np.concatenate([a.indices[k] for k in ("train", "val", "test")])
    assert len(np.unique(allix)) == 1797 == len(allix)
    # stratified: every class within 1 image of its expected share
    y_all = np.concatenate([a[k].tensors[1].numpy() for k in ("train", "val", "test")])
    tot = np.bincount(y_all, minlength=10)
    for k in ("train", "val", "test"):
        x, y = a[k].tensors
        assert x.shape[1:] == (1, 8, 8) and x.dtype == torch.float32 and y.dtype == torch.int64
        cnt = np.bincount(y.numpy(), minlength=10)
        assert np.all(np.abs(cnt - tot * len(y) / 1797) <= 1.0)
    # normalisation: train pixels standardised
    xt = a.train.tensors[0]
    assert abs(xt.mean().item()) < 1e-4 and abs(xt.std().item() - 1) < 1e-3
    assert 0 < a.mean < 1 and 0 < a.std < 1


# ----------------------------------------------------------------------------- CIFAR-10


@needs_data
def test_cifar_subsets_shapes_and_normalisation() -> None:
    for ds, n in ((cifar10_test_subset(), 1000), (cifar10_train_subset(), 4000)):
        assert len(ds) == n
        x, y = ds[0]
        assert x.shape == (3, 32, 32) and x.dtype == torch.float32
        assert y.dtype == torch.int64 and 0 <= int(y) < 10
        xb, yb = ds.tensors(range(64))
        assert xb.shape == (64, 3, 32, 32)
        mean = torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(CIFAR10_STD).view(1, 3, 1, 1)
        back = ((xb * std + mean) * 255).round().to(torch.uint8)
        assert torch.equal(back, ds.images[:64])
        assert sum(ds.class_counts()) == n and min(ds.class_counts()) > 0
    test = cifar10_test_subset()
    assert test.labels[:10].tolist() == [3, 8, 8, 0, 6, 6, 1, 6, 3, 1]  # official test order


@needs_data
def test_cifar_protocol(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("BITSMITH_CACHE_DIR", str(tmp_path))
    p = cifar10_protocol(n_val=1000, seed=0)
    assert p.sizes() == {"calibration": 4000, "val": 1000, "finetune": 49_000, "test": 1000}
    copies = set(jpeg_indices_of_train_subset().tolist())
    val = set(p.val_jpeg_indices.tolist())
    ft = set(p.finetune_jpeg_indices.tolist())
    assert len(val) == 1000 and not (val & copies) and not (val & ft) and not (ft & copies)
    assert len(val | ft | copies) == 50_000
    assert np.array_equal(p.val_jpeg_indices, cifar10_protocol(n_val=1000).val_jpeg_indices)
    v = p["val"]
    assert len(v) == 1000 and v.class_counts() == [100] * 10 and not v.augment
    assert v[0][0].shape == (3, 32, 32)
    assert p["test"].labels.shape == (1000,) and p["calibration"].images.shape[0] == 4000
    assert set(p.describe()) == {"calibration", "val", "finetune", "test"}
    with pytest.raises(KeyError):
        p["nope"]
    sub = cifar10_protocol(n_val=100, n_calib=500)
    assert len(sub.calibration) == 500 and sub.calibration.class_counts() == [50] * 10


@needs_data
def test_jpeg_copies_match_lossless_train_subset() -> None:
    ix = jpeg_indices_of_train_subset()
    pick = np.array([0, 1, 2, 761, 1999, 3999])
    jp = decode_cifar10_jpeg(ix[pick], cache=False).astype(np.float64)
    ll = cifar10_train_subset().images[pick].permute(0, 2, 3, 1).numpy().astype(np.float64)
    mse = ((jp - ll) ** 2).mean(axis=(1, 2, 3))
    psnr = 10 * np.log10(255**2 / mse)
    assert np.all(psnr > 20), psnr


def test_random_crop_flip() -> None:
    x = torch.arange(2 * 3 * 6 * 6, dtype=torch.float32).view(2, 3, 6, 6)
    assert torch.equal(random_crop_flip(x, pad=0, flip=False), x)
    g = torch.Generator().manual_seed(0)
    y = random_crop_flip(x, pad=2, flip=True, fill=-1.0, generator=g)
    assert y.shape == x.shape
    padded = F.pad(x, (2, 2, 2, 2), value=-1.0)
    for i in range(2):  # each output is a window of the padded image, maybe flipped
        wins = [padded[i, :, a:a + 6, b:b + 6] for a in range(5) for b in range(5)]
        assert any(torch.equal(y[i], w) or torch.equal(y[i], w.flip(-1)) for w in wins)
    assert random_crop_flip(x[0], pad=4).shape == (3, 6, 6)
    ds = ArrayImageDataset(np.zeros((4, 8, 8, 3), np.uint8), [0, 1, 2, 3], CIFAR10_MEAN,
                           CIFAR10_STD, augment=True)
    assert ds[1][0].shape == (3, 8, 8)


def test_make_loader_errors() -> None:
    empty = ArrayImageDataset(np.zeros((0, 8, 8), np.uint8), [], (0.5,), (0.5,))
    with pytest.raises(ValueError, match="empty"):
        make_loader(empty)
    one = ArrayImageDataset(np.zeros((3, 8, 8), np.uint8), [0, 1, 2], (0.5,), (0.5,))
    with pytest.raises(ValueError, match="no batch"):
        make_loader(one, batch_size=4, drop_last=True)
    xb, yb = next(iter(make_loader(one, batch_size=2)))
    assert xb.shape == (2, 1, 8, 8) and yb.tolist() == [0, 1]


# ----------------------------------------------------------------------------- MNIST / IDX


def _write_idx(path: Path, magic: int, arr: np.ndarray, compress: bool = True) -> None:
    data = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in arr.shape)
    data += arr.astype(np.uint8).tobytes()
    if compress:
        with gzip.open(path, "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)


def test_idx_parsing_synthetic(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (3, 28, 28), dtype=np.uint8)
    labels = np.array([7, 0, 9], np.uint8)
    _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", IDX_IMAGES_MAGIC, imgs)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", IDX_LABELS_MAGIC, labels)
    _write_idx(tmp_path / "raw-idx3-ubyte", IDX_IMAGES_MAGIC, imgs, compress=False)
    a = read_idx(tmp_path / "t10k-images-idx3-ubyte.gz", IDX_IMAGES_MAGIC)
    assert a.shape == (3, 28, 28) and a.dtype == np.uint8 and np.array_equal(a, imgs)
    assert np.array_equal(read_idx(tmp_path / "raw-idx3-ubyte"), imgs)
    x, y = load_mnist_arrays("test", root=tmp_path)
    assert y.tolist() == [7, 0, 9] and y.dtype == np.int64
    ds = mnist("test", root=tmp_path)
    xi, yi = ds[2]
    assert xi.shape == (1, 28, 28) and int(yi) == 9
    expected = (torch.from_numpy(imgs[2]).float() / 255 - 0.1307) / 0.3081
    torch.testing.assert_close(xi[0], expected)


def test_idx_bad_magic_and_truncation(tmp_path: Path) -> None:
    bad = tmp_path / "bad.gz"
    _write_idx(bad, 2052, np.zeros((2, 4, 4), np.uint8))
    with pytest.raises(ValueError, match="bad IDX magic number 2052.*expected 2051"):
        read_idx(bad, IDX_IMAGES_MAGIC)
    junk = tmp_path / "junk"
    junk.write_bytes(b"\x12\x34\x56\x78" + bytes(20))
    with pytest.raises(ValueError, match="magic"):
        read_idx(junk)
    short = tmp_path / "short"
    _write_idx(short, IDX_IMAGES_MAGIC, np.zeros((2, 4, 4), np.uint8), compress=False)
    short.write_bytes(short.read_bytes()[:-5])
    with pytest.raises(ValueError, match="truncated"):
        read_idx(short, IDX_IMAGES_MAGIC)
    with pytest.raises(FileNotFoundError):
        load_mnist_arrays("train", root=tmp_path)


@needs_data
def test_mnist_real_test_split() -> None:
    ds = mnist("test")
    assert len(ds) == 10_000
    x, y = ds[0]
    assert x.shape == (1, 28, 28) and x.dtype == torch.float32 and int(y) == 7
    assert ds.class_counts() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


# ----------------------------------------------------------------------------- data root


def test_data_root_error_when_env_points_to_empty_dir(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("BITSMITH_DATA", str(tmp_path))
    with pytest.raises(FileNotFoundError) as ei:
        data_root()
    msg = str(ei.value)
    assert str(tmp_path) in msg and "BITSMITH_DATA" in msg
    with pytest.raises(FileNotFoundError, match="cifar10_test_subset.npz"):
        cifar10_test_subset()
    with pytest.raises(FileNotFoundError, match="resnet20"):
        load_pretrained_cifar_resnet(20)
    with pytest.raises(FileNotFoundError, match="BITSMITH_DATA"):
        mnist("test")


@needs_data
def test_data_root_default_and_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BITSMITH_DATA", raising=False)
    root = data_root("cifar10/cifar10_test_subset.npz")
    assert (root / "SOURCES.md").exists()
    monkeypatch.setenv("BITSMITH_DATA", str(root))
    assert data_root() == root

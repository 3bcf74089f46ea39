"""Model input: every spec form of resolve_model, every checkpoint form, every bad input."""

from __future__ import annotations

import json
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn
from user_inputs import USER_MODEL, write_user_model

from bitsmith.errors import InputError
from bitsmith.inputs import ModelSpecError, describe_model, resolve_model
from bitsmith.models import available_models, build_model
from bitsmith.models.checkpoint import (
    CheckpointError,
    load_checkpoint,
    read_state_dict,
    strip_prefixes,
)


@pytest.fixture
def user_file(tmp_path: Path) -> Path:
    return write_user_model(tmp_path)


def _weights(user_file: Path, **kw) -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    model = resolve_model(f"{user_file}:build", model_kwargs=kw or None)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_()
    return {k: v.clone() for k, v in model.state_dict().items()}


def _same(model: nn.Module, state: dict[str, torch.Tensor]) -> bool:
    own = model.state_dict()
    return all(torch.equal(own[k], v) for k, v in state.items())


# ----------------------------------------------------------------- spec forms
def test_file_factory_with_every_kwargs_form(user_file: Path, tmp_path: Path) -> None:
    model = resolve_model(f"{user_file}:build")
    assert type(model).__name__ == "UserNet" and not model.training  # eval mode
    (tmp_path / "kw.yaml").write_text("num_classes: 7\nwidth: 5\n")
    (tmp_path / "kw.json").write_text(json.dumps({"num_classes": 7, "width": 5}))
    for kwargs in ({"num_classes": 7, "width": 5}, str(tmp_path / "kw.yaml"),
                   tmp_path / "kw.json", "{num_classes: 7, width: 5}", "num_classes=7,width=5"):
        model = resolve_model(f"{user_file}:build", model_kwargs=kwargs)
        assert model.head.out_features == 7 and model.stem.out_channels == 5, kwargs


def test_module_factory_and_callable_and_instance(user_file: Path, monkeypatch) -> None:
    pkg = user_file.parent / "userpkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "nets.py").write_text(USER_MODEL)
    monkeypatch.syspath_prepend(str(user_file.parent))
    model = resolve_model("userpkg.nets:build", model_kwargs="num_classes=3")
    assert model.head.out_features == 3
    net = nn.Sequential(nn.Linear(2, 2)).train()
    assert resolve_model(net) is net and not net.training
    assert isinstance(resolve_model(lambda width=2: nn.Linear(width, 1), model_kwargs="width=3"),
                      nn.Linear)
    sys.modules.pop("userpkg.nets", None)
    sys.modules.pop("userpkg", None)


def test_registered_names_and_torchvision() -> None:
    names = available_models(include_torchvision=False)
    for depth in (20, 32, 44, 56, 110, 1202):
        assert f"resnet{depth}" in names
    r110 = resolve_model("resnet110", model_kwargs={"num_classes": 10})
    assert sum(p.numel() for p in r110.parameters()) == 1_727_962
    assert len(r110.layer1) == 18
    pytest.importorskip("torchvision")
    tv = resolve_model("torchvision:mobilenet_v3_small", model_kwargs="num_classes=5")
    assert tv(torch.randn(1, 3, 32, 32)).shape == (1, 5)
    with pytest.raises(ModelSpecError, match="never downloads"):
        resolve_model("torchvision:resnet18", pretrained=True)
    with pytest.raises(ModelSpecError, match="torchvision has no such model"):
        resolve_model("torchvision:no_such_net")


def test_unknown_and_unshipped_models(user_file: Path) -> None:
    with pytest.raises(ModelSpecError, match="unknown model 'resnet57'.*resnet56"):
        resolve_model("resnet57")
    with pytest.raises(ModelSpecError, match="no pretrained weights.*--checkpoint"):
        resolve_model("resnet56", pretrained=True)
    with pytest.raises(ModelSpecError, match="keyword arguments"):
        resolve_model("resnet20", model_kwargs="num_clases=3")
    with pytest.raises(ModelSpecError, match=r"name the factory.*user_net.py:build"):
        resolve_model(str(user_file))
    with pytest.raises(ModelSpecError, match="registered names only"):
        resolve_model(f"{user_file}:build", pretrained=True)


# ----------------------------------------------------------------- factory errors
def test_factory_errors(user_file: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelSpecError, match=r"'nope.py' not found"):
        resolve_model("nope.py:build")
    bad = tmp_path / "bad.py"
    bad.write_text("import torch\n\ndef build(:\n    pass\n")
    with pytest.raises(ModelSpecError, match=r"importing .*bad.py.* failed: SyntaxError.*line 3"):
        resolve_model(f"{bad}:build")
    failing = tmp_path / "failing.py"
    failing.write_text("import not_a_real_package_xyz\n")
    with pytest.raises(ModelSpecError, match="ModuleNotFoundError.*not_a_real_package_xyz"):
        resolve_model(f"{failing}:build")
    with pytest.raises(ModelSpecError, match=r"raised KeyError: 'missing' \(user_net.py line"):
        resolve_model(f"{user_file}:broken")
    with pytest.raises(ModelSpecError, match="returned int, not a torch.nn.Module"):
        resolve_model(f"{user_file}:not_a_model")
    with pytest.raises(ModelSpecError, match="has no attribute 'biuld'.*defines: .*build"):
        resolve_model(f"{user_file}:biuld")
    with pytest.raises(ModelSpecError, match="no Python module named 'no_such_pkg_q'"):
        resolve_model("no_such_pkg_q.models:build")
    with pytest.raises(ModelSpecError, match="unexpected keyword argument 'depth'"):
        resolve_model(f"{user_file}:build", model_kwargs="depth=3")
    with pytest.raises(ModelSpecError, match="expected a mapping"):
        resolve_model(f"{user_file}:build", model_kwargs="[1, 2]")
    with pytest.raises(ModelSpecError, match="'missing.yaml' not found"):
        resolve_model(f"{user_file}:build", model_kwargs="missing.yaml")
    for err in (ModelSpecError, CheckpointError):
        assert issubclass(err, InputError)


# ----------------------------------------------------------------- checkpoint forms
def test_every_checkpoint_form_loads_exactly(user_file: Path, tmp_path: Path) -> None:
    state = _weights(user_file)
    plain = {k: v for k, v in state.items()}
    files = {
        "plain.pt": plain,
        "wrapped.pth": {"state_dict": plain, "epoch": 3, "best_acc": 91.2},
        "model_key.pt": {"model": plain, "optimizer": {"lr": 0.1}},
        "msd.pt": {"model_state_dict": plain},
        "ddp.pt": {f"module.{k}": v for k, v in plain.items()},
        "compiled.pt": {f"_orig_mod.{k}": v for k, v in plain.items()},
        "both.pt": {f"_orig_mod.module.{k}": v for k, v in plain.items()},
    }
    for name, obj in files.items():
        torch.save(obj, tmp_path / name)
    torch.save({"state_dict": {f"module.{k}": v for k, v in plain.items()}}, tmp_path / "old.th",
               _use_new_zipfile_serialization=False)
    save_file({k: v.contiguous() for k, v in plain.items()}, str(tmp_path / "w.safetensors"))
    for name in [*files, "old.th", "w.safetensors"]:
        model = resolve_model(f"{user_file}:build", checkpoint=tmp_path / name)
        assert _same(model, plain), name
        assert not model.training


def test_bn_counters_may_be_missing_and_prefix_rule(user_file: Path, tmp_path: Path) -> None:
    state = {k: v for k, v in _weights(user_file).items() if "num_batches_tracked" not in k}
    torch.save(state, tmp_path / "old_bn.pt")
    assert _same(resolve_model(f"{user_file}:build", checkpoint=tmp_path / "old_bn.pt"), state)
    # a model whose own keys all start with "module." keeps the prefix
    kept = strip_prefixes({"module.w": torch.zeros(1)}, {"module.w"})
    assert list(kept) == ["module.w"]


def test_mismatched_keys_are_named(user_file: Path, tmp_path: Path) -> None:
    state = _weights(user_file)
    renamed = {k.replace("head.", "fc."): v for k, v in state.items()}
    torch.save(renamed, tmp_path / "renamed.pt")
    with pytest.raises(CheckpointError) as info:
        resolve_model(f"{user_file}:build", checkpoint=tmp_path / "renamed.pt")
    msg = str(info.value)
    assert "2 missing key(s): head.weight, head.bias" in msg
    assert "2 unexpected key(s): fc.weight, fc.bias" in msg and "\n" not in msg
    torch.save(_weights(user_file, num_classes=9), tmp_path / "nine.pt")
    with pytest.raises(CheckpointError, match=r"shape mismatch.*head.weight \(9, 6\) vs model "
                                              r"\(4, 6\)"):
        resolve_model(f"{user_file}:build", checkpoint=tmp_path / "nine.pt")
    many = {f"extra.{i}": torch.zeros(1) for i in range(25)} | state
    torch.save(many, tmp_path / "many.pt")
    with pytest.raises(CheckpointError, match=r"25 unexpected key\(s\): .* and 15 more"):
        resolve_model(f"{user_file}:build", checkpoint=tmp_path / "many.pt")
    model = resolve_model(f"{user_file}:build")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError):
        load_checkpoint(model, tmp_path / "renamed.pt")
    assert _same(model, before)  # untouched on a mismatch


def test_unsafe_truncated_corrupt_and_wrong_hash(user_file: Path, tmp_path: Path) -> None:
    model = resolve_model(f"{user_file}:build")
    torch.save(model, tmp_path / "pickled_module.pt")
    with pytest.raises(CheckpointError, match=r"pickled Python objects.*weights_only=True"):
        resolve_model(f"{user_file}:build", checkpoint=tmp_path / "pickled_module.pt")
    state = _weights(user_file)
    torch.save(state, tmp_path / "good.pt")
    raw = (tmp_path / "good.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        read_state_dict(tmp_path / "cut.pt")
    with zipfile.ZipFile(tmp_path / "good.pt") as zf:  # flip one byte of a tensor's data
        info = next(i for i in zf.infolist() if "/data/" in i.filename and i.file_size > 8)
        name_len = len(info.filename.encode())
    extra_len = int.from_bytes(raw[info.header_offset + 28:info.header_offset + 30], "little")
    at = info.header_offset + 30 + name_len + extra_len + 4
    flipped = bytearray(raw)
    flipped[at] ^= 0xFF
    (tmp_path / "crc.pt").write_bytes(bytes(flipped))
    with pytest.raises(CheckpointError, match="fails its CRC-32 check"):
        read_state_dict(tmp_path / "crc.pt")
    torch.save(state, tmp_path / "old.th", _use_new_zipfile_serialization=False)
    old = (tmp_path / "old.th").read_bytes()
    (tmp_path / "old_cut.th").write_bytes(old[: len(old) - 100])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        read_state_dict(tmp_path / "old_cut.th")
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "w.safetensors"))
    st = (tmp_path / "w.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(st[:-10])
    with pytest.raises(CheckpointError, match=r"is truncated: its header describes"):
        read_state_dict(tmp_path / "cut.safetensors")
    (tmp_path / "pad.safetensors").write_bytes(st + b"\0" * 4)
    with pytest.raises(CheckpointError, match="extra bytes"):
        read_state_dict(tmp_path / "pad.safetensors")
    (tmp_path / "head.safetensors").write_bytes(st[:20])
    with pytest.raises(CheckpointError, match="truncated"):
        read_state_dict(tmp_path / "head.safetensors")
    # hash: torch.hub-style name, explicit sha256
    (tmp_path / "net-deadbeef.pt").write_bytes(raw)
    with pytest.raises(CheckpointError, match=r"but its file name says deadbeef"):
        read_state_dict(tmp_path / "net-deadbeef.pt")
    (tmp_path / "net-20240101.pt").write_bytes(raw)  # a date, not a hash
    assert read_state_dict(tmp_path / "net-20240101.pt").keys() == state.keys()
    import hashlib

    digest = hashlib.sha256(raw).hexdigest()
    assert read_state_dict(tmp_path / "good.pt", sha256=digest[:12]).keys() == state.keys()
    with pytest.raises(CheckpointError, match="the given sha256"):
        resolve_model(f"{user_file}:build", checkpoint=tmp_path / "good.pt", sha256="0" * 12)


def test_other_bad_checkpoints(user_file: Path, tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not found"):
        resolve_model(f"{user_file}:build", checkpoint=tmp_path / "none.pt")
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match="is empty"):
        read_state_dict(tmp_path / "empty.pt")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(CheckpointError, match="neither a safetensors file nor a torch.save"):
        read_state_dict(tmp_path / "notes.txt")
    torch.save({"epoch": 3, "lr": 0.1}, tmp_path / "meta.pt")
    with pytest.raises(CheckpointError, match="holds no state dict.*'epoch'"):
        read_state_dict(tmp_path / "meta.pt")


def test_pretrained_registered_checkpoint_as_user_file(tmp_path: Path) -> None:
    from bitsmith.data.paths import find_data_file

    try:
        path = find_data_file("models/akamaster_resnet_cifar10", "resnet20-*.th")
    except FileNotFoundError:
        pytest.skip("shared data not available")
    model = resolve_model("resnet20", checkpoint=path)
    ref = build_model("resnet20", pretrained=True)
    assert _same(model, ref.state_dict())
    assert describe_model("resnet20", path) == f"resnet20 + checkpoint {path.name}"

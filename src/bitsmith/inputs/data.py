"""One data resolver for the command line and the Python API: :func:`resolve_data`.

Data specs (``docs/inputs.md``):

========================  ==================================================================
``cifar10``               the CIFAR-10 protocol of ``shared/data/SOURCES.md``: calibration =
                          lossless training images, validation = JPEG training images (never
                          copies of the calibration ones), test = the 1,000 lossless test
                          images, train = the fine-tuning split
``mnist``                 calibration = 1,000 training images (stratified, seeded),
                          validation = test images 0..4999, test = test images 5000..9999,
                          train = the 60,000 training images
``digits``                scikit-learn's digits: train (calibration, train) / val / test
``path/to/folder``        an image folder (:mod:`bitsmith.inputs.folder`); with ``train/``,
                          ``val/``, ``test/`` sub-folders, those are the splits
``file.npz``,             a tensors file (:mod:`bitsmith.inputs.tensorfile`)
``file.safetensors``
``file.py:make_data``     a factory (``package.module:make_data`` too), called with the data
                          keyword arguments; returns a dataset (split by the rule), a mapping
                          ``{calibration, validation, test, train}``, a tuple
                          ``(calibration, validation[, test])`` or a :class:`DataSplits`
a Dataset, tensor,        Python API: used as they are (a single set is split by the rule)
``(x, y)``, DataLoader
========================  ==================================================================

Roles come from one ``data`` source and/or explicit ``calibration=`` / ``validation=`` /
``test=`` / ``train=`` specs (explicit ones win). A single set is cut by the split rule
(:mod:`bitsmith.inputs.splits`) into the roles still missing. Split folders without ``val/``
take validation from half of ``test/`` (training images are memorised and hide drops).
``train`` (fine-tuning data) defaults to the calibration data.

Then: labels are required on validation and test when ``require_labels`` (top-1), and
splits that share items are refused (:func:`bitsmith.inputs.splits.check_disjoint`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence, Sized
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset

from bitsmith.data.datasets import ArrayImageDataset, InputDataset, make_loader
from bitsmith.inputs.errors import DataSpecError
from bitsmith.inputs.folder import (
    ImageFileDataset,
    ImageTransform,
    image_folder_dataset,
    image_transform,
    split_folders,
)
from bitsmith.inputs.specs import (
    call_user,
    describe_exception,
    load_callable,
    load_mapping,
    split_callable_spec,
)
from bitsmith.inputs.splits import (
    DEFAULT_FRACTIONS,
    as_long_labels,
    check_disjoint,
    split_indices,
)
from bitsmith.inputs.tensorfile import TENSOR_SUFFIXES, tensor_file_dataset

ROLES = ("calibration", "validation", "test", "train")
RULE_ROLES = ("calibration", "validation", "test")
BUILTIN_DATA = ("cifar10", "mnist", "digits")
MNIST_CALIBRATION = 1000
_ALIASES = {"calib": "calibration", "val": "validation", "valid": "validation",
            "finetune": "train", "training": "train"}


@dataclass(frozen=True)
class SplitInfo:
    """What one split holds, for reports (JSON-serialisable with :func:`dataclasses.asdict`).

    Attributes:
        role: calibration, validation, test or train.
        size: items (``None``: unknown, e.g. an iterable loader).
        labelled: whether items carry targets.
        source: the spec it came from (``"cifar10"``, a folder, a file, a factory).
        description: one human sentence, e.g. ``"800 images of image folder 'shapes'
            (split rule, seed 0: 40 % validation, stratified)"``.
    """

    role: str
    size: int | None
    labelled: bool
    source: str
    description: str


class DataSplits:
    """The resolved data: ``calibration``, ``validation``, ``test``, ``train`` (datasets,
    or loaders when the user gave loaders; ``None`` when absent) with a
    :class:`SplitInfo` per split in ``info``. Built-in splits are built on first access.
    """

    def __init__(self, splits: Mapping[str, Any], info: Mapping[str, SplitInfo], *,
                 rule: str = "", classes: Sequence[str] | None = None) -> None:
        unknown = set(splits) - set(ROLES)
        if unknown:
            raise DataSpecError(f"unknown data role(s) {sorted(unknown)}; use {ROLES}")
        self._splits = dict(splits)
        self.info = dict(info)
        self.rule = rule
        self.classes = tuple(classes) if classes is not None else None

    def get(self, role: str) -> Any:
        """The split ``role`` (built on first access), or ``None``."""
        role = _ALIASES.get(role, role)
        if role not in ROLES:
            raise KeyError(f"unknown data role {role!r}; use one of {ROLES}")
        value = self._splits.get(role)
        if isinstance(value, _Lazy):
            value = self._splits[role] = value.build()
        return value

    @property
    def calibration(self) -> Any:
        return self.get("calibration")

    @property
    def validation(self) -> Any:
        return self.get("validation")

    @property
    def test(self) -> Any:
        return self.get("test")

    @property
    def train(self) -> Any:
        return self.get("train")

    def labelled(self, role: str) -> bool:
        """Whether the split carries labels (``False`` when it is absent)."""
        info = self.info.get(_ALIASES.get(role, role))
        return bool(info and info.labelled)

    def loader(self, role: str, batch_size: int = 128, *, shuffle: bool = False,
               seed: int | None = None, drop_last: bool = False) -> Any:
        """A ``DataLoader`` over the split (a loader or iterable the user gave is returned
        as it is)."""
        data = self.get(role)
        if data is None:
            raise DataSpecError(f"no {role} data was given; give it (--{role}-data) or a "
                                "data source to split")
        if isinstance(data, Dataset) and hasattr(data, "__len__"):
            return make_loader(data, batch_size=batch_size, shuffle=shuffle, seed=seed,
                               drop_last=drop_last)
        return data

    def describe(self) -> dict[str, Any]:
        """``{role: SplitInfo as dict, ..., "rule": how the roles were made}`` for reports."""
        out: dict[str, Any] = {r: asdict(self.info[r]) for r in ROLES if r in self.info}
        out["rule"] = self.rule
        return out

    def __repr__(self) -> str:
        sizes = {r: self.info[r].size for r in ROLES if r in self.info}
        return f"DataSplits({sizes})"


@dataclass
class _Lazy:
    build: Callable[[], Any]


@dataclass
class _Source:
    """A loaded spec: one set (``single``) or finished roles (``parts``)."""

    label: str
    single: Any = None
    parts: dict[str, Any] | None = None
    info: dict[str, SplitInfo] | None = None
    classes: tuple[str, ...] | None = None
    rule: str = ""


# ------------------------------------------------------------------ helpers
def _size(data: Any) -> int | None:
    if isinstance(data, _Lazy):
        return None
    try:
        return len(cast(Sized, data.dataset) if isinstance(data, DataLoader) else data)
    except TypeError:
        return None


def _first_item(data: Any) -> Any:
    if isinstance(data, DataLoader) or not hasattr(data, "__getitem__"):
        return next(iter(data))
    return data[0]


def is_labelled(data: Any) -> bool:
    """Whether ``data`` yields ``(inputs, targets)`` (dataset item or loader batch)."""
    flag = getattr(data.dataset if isinstance(data, DataLoader) else data, "labelled", None)
    if isinstance(flag, bool):
        return flag
    try:
        item = _first_item(data)
    except (StopIteration, IndexError, TypeError):
        return False
    return isinstance(item, (tuple, list)) and len(item) >= 2


def subset(data: Any, indices: np.ndarray, name: str | None = None) -> Any:
    """Rows ``indices`` of a dataset, keeping bitsmith's in-memory types."""
    if isinstance(data, (ArrayImageDataset, ImageFileDataset, InputDataset)):
        return data.subset(indices, name=name)
    return Subset(data, [int(i) for i in indices])


def _as_dataset(obj: Any, label: str) -> Any:
    """A user object as a dataset: tensors become :class:`InputDataset`."""
    if isinstance(obj, Tensor):
        return InputDataset(obj, None, name=label)
    if isinstance(obj, tuple) and len(obj) == 2 and all(isinstance(t, Tensor) for t in obj):
        try:
            return InputDataset(obj[0], obj[1], name=label)
        except ValueError as err:
            raise DataSpecError(f"data {label}: {err}") from err
    if isinstance(obj, (Dataset, DataLoader)) or hasattr(obj, "__iter__"):
        if _size(obj) == 0:
            raise DataSpecError(f"data {label} is empty (0 items)")
        return obj
    raise DataSpecError(f"data {label}: expected a dataset, a DataLoader, a tensor or an "
                        f"(inputs, targets) pair, got {type(obj).__name__}")


def _describe_set(data: Any, label: str) -> str:
    n = _size(data)
    count = "an iterable" if n is None else f"{n:,} items"
    if isinstance(data, ImageFileDataset):
        classes = "unlabelled" if data.labels is None else \
            f"{int(data.labels.max()) + 1} classes"
        return f"image folder {label!r} ({n:,} images, {classes}; {data.transform.describe()})"
    if isinstance(data, (InputDataset, ArrayImageDataset)):
        first: Any = data[0]  # (x, y) when labelled, else x
        shape = tuple(first[0].shape if data.labelled else first.shape)
        return f"{label} ({count}, inputs {shape}, {'labelled' if data.labelled else 'no labels'})"
    return f"{label} ({count})"


# ------------------------------------------------------------------ built-ins
def _cap(data: Any, n: int | None, seed: int, role: str) -> Any:
    if n is None or n >= len(data):
        return data
    if n < 1:
        raise DataSpecError(f"{role} size must be >= 1, got {n}")
    if not hasattr(data, "__getitem__"):
        raise DataSpecError(f"the {role} data cannot be cut to {n} items (no indexing, e.g. "
                            "a DataLoader); give it at the size you want")
    idx = split_indices(len(data), [n, len(data) - n], labels=as_long_labels(data),
                        seed=seed)[0]
    return subset(data, idx, name=getattr(data, "name", None))


def _info(role: str, size: int | None, source: str, text: str, labelled: bool = True
          ) -> SplitInfo:
    return SplitInfo(role, size, labelled, source, text)


def _cifar10(seed: int, calibration_size: int | None, validation_size: int | None) -> _Source:
    from bitsmith.data.cifar import cifar10_protocol
    from bitsmith.data.datasets import CIFAR10_CLASSES

    n_val = max(5000, validation_size or 0)
    proto = cifar10_protocol(n_val=n_val, seed=seed, n_calib=calibration_size)
    sizes = proto.sizes()
    v = min(validation_size or 5000, sizes["val"])

    def validation() -> Any:
        val = proto.val
        return val if v == len(val) else val.subset(np.arange(v), name="cifar10-val-jpeg")

    info = {
        "calibration": _info("calibration", sizes["calibration"], "cifar10",
                             f"{sizes['calibration']:,} lossless CIFAR-10 training images "
                             "(data_batch_1[0:4000]" + (", stratified subset)" if
                                                        calibration_size else ")")),
        "validation": _info("validation", v, "cifar10",
                            f"{v:,} JPEG-q75 CIFAR-10 training images (protocol val split, "
                            f"seed {seed}; no copies of the calibration images)"),
        "test": _info("test", 1000, "cifar10", "1,000 lossless CIFAR-10 test images "
                      "(official test 0..999)"),
        "train": _info("train", sizes["finetune"], "cifar10",
                       f"{sizes['finetune']:,} CIFAR-10 training images (4,000 lossless + JPEG "
                       "outside the validation split, augmented)"),
    }
    parts = {"calibration": _Lazy(lambda: proto.calibration), "validation": _Lazy(validation),
             "test": _Lazy(lambda: proto.test), "train": _Lazy(lambda: proto.finetune)}
    return _Source("cifar10", parts=parts, info=info, classes=CIFAR10_CLASSES,
                   rule="CIFAR-10 protocol (shared/data/SOURCES.md)")


def _mnist(seed: int, calibration_size: int | None, validation_size: int | None) -> _Source:
    from bitsmith.data.mnist import mnist

    n_cal = calibration_size or MNIST_CALIBRATION
    v = min(validation_size or 5000, 5000)
    memo: dict[str, Any] = {}

    def split(name: str) -> Any:
        if name not in memo:
            memo[name] = mnist(name)
        return memo[name]

    info = {
        "calibration": _info("calibration", n_cal, "mnist", f"{n_cal:,} MNIST training images "
                             f"(stratified, seed {seed})"),
        "validation": _info("validation", v, "mnist", f"MNIST test images 0..{v - 1}"),
        "test": _info("test", 5000, "mnist", "MNIST test images 5000..9999"),
        "train": _info("train", 60000, "mnist", "the 60,000 MNIST training images"),
    }
    parts = {
        "calibration": _Lazy(lambda: _cap(split("train"), n_cal, seed, "calibration")),
        "validation": _Lazy(lambda: split("test").subset(np.arange(v), name="mnist-val")),
        "test": _Lazy(lambda: split("test").subset(np.arange(5000, 10000), name="mnist-test")),
        "train": _Lazy(lambda: split("train")),
    }
    return _Source("mnist", parts=parts, info=info, classes=tuple(map(str, range(10))),
                   rule="MNIST: validation and test are the two halves of the official test set")


def _digits(seed: int, calibration_size: int | None, validation_size: int | None) -> _Source:
    from bitsmith.data.digits import digits_splits

    sp = digits_splits(seed=seed)
    cal = _cap(sp.train, calibration_size, seed, "calibration")
    val = _cap(sp.val, validation_size, seed, "validation")
    info = {
        "calibration": _info("calibration", len(cal), "digits",
                             f"{len(cal):,} scikit-learn digits (train split, seed {seed})"),
        "validation": _info("validation", len(val), "digits",
                            f"{len(val):,} scikit-learn digits (val split, seed {seed})"),
        "test": _info("test", len(sp.test), "digits",
                      f"{len(sp.test):,} scikit-learn digits (test split, seed {seed})"),
        "train": _info("train", len(sp.train), "digits",
                       f"{len(sp.train):,} scikit-learn digits (train split, seed {seed})"),
    }
    return _Source("digits", parts={"calibration": cal, "validation": val, "test": sp.test,
                                    "train": sp.train}, info=info,
                   classes=tuple(map(str, range(10))),
                   rule=f"scikit-learn digits: stratified 60/20/20 split, seed {seed}")


_BUILTINS: dict[str, Callable[[int, int | None, int | None], _Source]] = {
    "cifar10": _cifar10, "mnist": _mnist, "digits": _digits}


# ------------------------------------------------------------------ loading one spec
def _from_factory_result(result: Any, label: str) -> _Source:
    if isinstance(result, DataSplits):
        parts = {r: result.get(r) for r in ROLES if result.get(r) is not None}
        return _Source(label, parts=parts, info=dict(result.info), classes=result.classes,
                       rule=result.rule)
    if isinstance(result, Mapping):
        parts = {}
        for key, value in result.items():
            role = _ALIASES.get(str(key), str(key))
            if role not in ROLES:
                raise DataSpecError(f"data {label} returned the key {key!r}; use "
                                    f"{', '.join(ROLES)}")
            if value is not None:
                parts[role] = _as_dataset(value, f"{label} [{role}]")
        return _Source(label, parts=parts, info=_infos(parts, label),
                       rule=f"splits returned by {label}")
    if isinstance(result, (tuple, list)) and not (
            len(result) == 2 and all(isinstance(t, Tensor) for t in result)):
        if not 2 <= len(result) <= 3:
            raise DataSpecError(f"data {label} returned {len(result)} sets; return "
                                "(calibration, validation) or (calibration, validation, test)")
        return _from_factory_result(dict(zip(RULE_ROLES, result)), label)
    return _Source(label, single=_as_dataset(result, label))


def _load(spec: Any, *, transform: ImageTransform | None, kwargs: dict[str, Any],
          seed: int, fractions: dict[str, float], sizes: tuple[int | None, int | None],
          role: str | None) -> _Source:
    what = f"data {spec!r}" if role is None else f"{role} data {spec!r}"
    if isinstance(spec, Path):
        spec = str(spec)
    if not isinstance(spec, str):
        return _from_factory_result(spec, type(spec).__name__)
    spec = spec.strip()
    if spec in _BUILTINS:
        if transform is not None:
            raise DataSpecError(f"{what}: built-in data has fixed preprocessing; image options "
                                "(preset, size, mean, std, channels) apply to folders and files")
        return _BUILTINS[spec](seed, *sizes)
    path = Path(spec).expanduser()
    if path.is_dir():
        return _load_folder(path, transform or ImageTransform(), seed, fractions)
    if path.suffix.lower() in TENSOR_SUFFIXES:
        ds = tensor_file_dataset(path, transform)
        return _Source(spec, single=ds)
    if split_callable_spec(spec) is not None:
        fn, file = load_callable(spec, what=what, error=DataSpecError)
        result = call_user(fn, what=f"data factory {spec!r}", error=DataSpecError, path=file,
                           fix="fix the factory or its keyword arguments (--data-kwargs)",
                           **kwargs)
        return _from_factory_result(result, repr(spec))
    if path.exists():
        raise DataSpecError(f"{what}: a file that is neither an image folder nor a tensors file "
                            f"({', '.join(TENSOR_SUFFIXES)}); see docs/inputs.md")
    raise DataSpecError(f"{what} not found: not a built-in ({', '.join(BUILTIN_DATA)}), an "
                        "existing folder or file, nor file.py:function; check the spelling")


def _load_folder(root: Path, transform: ImageTransform, seed: int,
                 fractions: dict[str, float]) -> _Source:
    folders = split_folders(root)
    if folders is not None and set(folders) == {"calibration"}:
        root, folders = folders["calibration"], None
    if folders is None:
        ds, scan = image_folder_dataset(root, transform)
        return _Source(str(root), single=ds, classes=scan.classes or None)
    parts, classes = {}, None
    for role, folder in folders.items():
        ds, scan = image_folder_dataset(folder, transform)
        if classes is not None and scan.classes and scan.classes != classes:
            raise DataSpecError(f"image folder {str(root)!r}: the split folders have different "
                                f"classes ({', '.join(classes)} vs {', '.join(scan.classes)}); "
                                "use the same class folders in each")
        classes = classes or scan.classes or None
        parts[role] = _seeded_order(ds, seed)
    info = _infos(parts, str(root))
    rule = "split folders " + ", ".join(f"{p.name}/ = {r}" for r, p in folders.items())
    if "validation" not in parts and "test" in parts:
        made, made_info, how = _rule_split(parts["test"], f"{folders['test']}",
                                           ["validation", "test"],
                                           {**fractions, "validation": 1.0, "test": 1.0}, seed)
        parts.update(made)
        info.update(made_info)
        rule += f"; no val/ folder, so {how} (training images hide drops)"
    return _Source(str(root), parts=parts, info=info, classes=classes, rule=rule)


def _infos(parts: Mapping[str, Any], label: str) -> dict[str, SplitInfo]:
    return {r: SplitInfo(r, _size(d), is_labelled(d), label, _describe_set(d, label))
            for r, d in parts.items()}


# ------------------------------------------------------------------ assembling roles
def _fractions(split: Sequence[float] | str | Mapping[str, float] | None) -> dict[str, float]:
    if split is None:
        return dict(DEFAULT_FRACTIONS)
    if isinstance(split, Mapping):
        values = {(_ALIASES.get(k, k)): float(v) for k, v in split.items()}
        unknown = set(values) - set(RULE_ROLES)
        if unknown:
            raise DataSpecError(f"split: unknown role(s) {sorted(unknown)}; use {RULE_ROLES}")
        return {r: values.get(r, 0.0) for r in RULE_ROLES}
    try:
        vals = [float(v) for v in (split.split(",") if isinstance(split, str) else split)]
    except ValueError:
        raise DataSpecError(f"split {split!r}: give three fractions, e.g. 0.2,0.4,0.4") from None
    if len(vals) != 3 or any(v < 0 for v in vals) or not sum(vals) > 0:
        raise DataSpecError(f"split {split!r}: give three fractions >= 0 (calibration, "
                            "validation, test), e.g. 0.2,0.4,0.4")
    return dict(zip(RULE_ROLES, vals))


def _rule_split(single: Any, label: str, roles: list[str], fractions: dict[str, float],
                seed: int) -> tuple[dict[str, Any], dict[str, SplitInfo], str]:
    n = _size(single)
    if n is None or not hasattr(single, "__getitem__"):
        raise DataSpecError(f"data {label} cannot be split (no length / indexing, e.g. a "
                            "DataLoader); give the calibration and validation data separately")
    weights = [fractions[r] for r in roles]
    if sum(weights) <= 0:
        raise DataSpecError(f"split: the fractions of {', '.join(roles)} are all 0")
    labels = as_long_labels(single)
    parts = split_indices(n, weights, labels=labels, seed=seed)
    empty = [r for r, ix in zip(roles, parts) if len(ix) == 0 and fractions[r] > 0]
    if empty:
        raise DataSpecError(f"data {label} has only {n} item(s): too few to split into "
                            f"{', '.join(roles)}; give more data or separate sets")
    total = sum(weights)
    strat = "stratified by class" if labels is not None else "shuffled"
    out, info = {}, {}
    base = _describe_set(single, label)
    for role, ix in zip(roles, parts):
        if len(ix) == 0:
            continue
        out[role] = subset(single, ix, name=f"{getattr(single, 'name', label)} [{role}]")
        info[role] = SplitInfo(role, len(ix), is_labelled(single), label,
                               f"{len(ix):,} of {base} (split rule, seed {seed}: "
                               f"{fractions[role] / total:.0%} {role}, {strat})")
    rule = (f"split rule on {label}: " + ", ".join(f"{r} {fractions[r] / total:.0%}"
                                                   for r in roles) + f", {strat}, seed {seed}")
    return out, info, rule


def _seeded_order(data: Any, seed: int) -> Any:
    """A bitsmith-built set in a seeded random order (prefixes then cover every class)."""
    n = _size(data)
    if not n or not isinstance(data, (ArrayImageDataset, ImageFileDataset, InputDataset)):
        return data
    order = split_indices(n, [1.0], labels=as_long_labels(data), seed=seed)[0]
    return subset(data, order, name=getattr(data, "name", None))


IMAGE_OPTIONS = ("preset", "image_size", "resize", "channels", "mean", "std")
SIZE_OPTIONS = ("calibration_size", "validation_size")


def _options(options: Mapping[str, Any]) -> tuple[ImageTransform | None, tuple[Any, Any]]:
    """``(image transform or None, (calibration_size, validation_size))`` of
    :func:`resolve_data`'s keyword options; an unknown option names the valid ones."""
    from bitsmith.config import check_keys

    check_keys(options, IMAGE_OPTIONS + SIZE_OPTIONS, "resolve_data")
    image = {k: options.get(k) for k in IMAGE_OPTIONS}
    transform = None
    if any(v is not None for v in image.values()):
        preset = image.pop("preset")
        image["size"] = image.pop("image_size")
        transform = image_transform(preset, **image)
    return transform, (options.get("calibration_size"), options.get("validation_size"))


@dataclass
class _Parts:
    """The splits as :func:`resolve_data` assembles them."""

    parts: dict[str, Any]
    info: dict[str, SplitInfo]
    rules: list[str]
    classes: Any = None


def _explicit(parts: _Parts, roles: Mapping[str, Any], common: dict[str, Any], seed: int
              ) -> None:
    """Add the roles given explicitly (``calibration=`` ...), one set each."""
    for role, spec in roles.items():
        if spec is None:
            continue
        src = _load(spec, role=role, **common)
        if src.single is None:
            raise DataSpecError(f"{role} data {spec!r} holds several splits; give one set "
                                "for it")
        parts.parts[role] = _seeded_order(src.single, seed)
        parts.info[role] = _infos({role: parts.parts[role]}, src.label)[role]
        parts.classes = parts.classes or src.classes
        parts.rules.append(f"{role}: {src.label}")


def _cut(parts: _Parts, single: _Source, fractions: dict[str, float], seed: int) -> None:
    """Cut one source into the rule's roles still missing."""
    missing = [r for r in RULE_ROLES if r not in parts.parts and fractions[r] > 0]
    if not missing:
        raise DataSpecError(f"data {single.label} is not used: calibration, validation and "
                            "test were all given separately; drop one of them")
    made, made_info, rule = _rule_split(single.single, single.label, missing, fractions, seed)
    parts.parts.update(made)
    parts.info.update(made_info)
    parts.rules.append(rule)


def _apply_caps(parts: _Parts, sizes: tuple[Any, Any], seed: int) -> None:
    """Cap the calibration and validation splits (stratified, seeded subsets)."""
    for role, cap in zip(("calibration", "validation"), sizes):
        value = parts.parts.get(role)
        if cap is not None and value is not None and not isinstance(value, _Lazy) \
                and _size(value) is not None and cap < _size(value):  # type: ignore[operator]
            parts.parts[role] = _cap(value, cap, seed, role)
            old = parts.info[role]
            parts.info[role] = SplitInfo(role, cap, old.labelled, old.source,
                                         f"{cap:,} (stratified, seed {seed}) of "
                                         f"{old.description}")


def _check_labels(info: Mapping[str, SplitInfo]) -> None:
    for role in ("validation", "test"):
        if role in info and not info[role].labelled:
            raise DataSpecError(
                f"the {role} data ({info[role].source}) has no labels, but top-1 accuracy "
                "needs them; give a labelled set (image folder: FOLDER/<class>/<image>; "
                "tensors file: a y array) or a metric function that needs no labels "
                "(--metric file.py:function)")


def resolve_data(data: Any = None, *, calibration: Any = None, validation: Any = None,
                 test: Any = None, train: Any = None,
                 split: Sequence[float] | str | Mapping[str, float] | None = None,
                 seed: int = 0, data_kwargs: str | Path | Mapping[str, Any] | None = None,
                 require_labels: bool = True, check_overlap: bool = True,
                 **options: Any) -> DataSplits:
    """Resolve data specs into calibration / validation / test / train splits.

    Args:
        data: one source (see the module docstring); optional when ``calibration`` is given.
        calibration, validation, test, train: explicit specs per role (override ``data``).
        split: fractions (calibration, validation, test) of the split rule, as a sequence,
            ``"0.2,0.4,0.4"`` or a mapping; default 0.2 / 0.4 / 0.4.
        seed: seed of the split rule, of the seeded orders and of the built-ins' draws.
        data_kwargs: keyword arguments of a data factory (mapping, YAML/JSON file, inline).
        require_labels: validation and test must be labelled (top-1 needs labels; a metric
            function may not).
        check_overlap: refuse splits that share items (only turn off for data you split
            yourself on purpose, e.g. a smoke test).
        **options: image options ``preset`` (``cifar10`` / ``imagenet`` / ``mnist``: size,
            channels, mean/std for folders and uint8 tensors files), ``image_size``,
            ``resize``, ``channels``, ``mean``, ``std`` (override the preset, see
            :class:`bitsmith.inputs.folder.ImageTransform`); ``calibration_size``,
            ``validation_size``: cap those splits (a stratified, seeded subset; for
            ``cifar10`` the validation cap is a prefix of the protocol's fixed order).

    Returns:
        :class:`DataSplits`.

    Raises:
        DataSpecError: see :mod:`bitsmith.inputs.folder`, :mod:`bitsmith.inputs.tensorfile`;
            no calibration data; unlabelled validation/test with ``require_labels``;
            overlapping splits; a set too small to split. ConfigError: an unknown option.
    """
    transform, sizes = _options(options)
    kwargs = load_mapping(data_kwargs, what="data keyword arguments (--data-kwargs)",
                          error=DataSpecError)
    fractions = _fractions(split)
    common = dict(transform=transform, kwargs=kwargs, seed=seed, fractions=fractions,
                  sizes=sizes)
    parts = _Parts({}, {}, [])
    single: _Source | None = None
    if data is not None:
        src = _load(data, role=None, **common)  # type: ignore[arg-type]
        parts.classes = src.classes
        if src.single is not None:
            single = src
        else:
            parts.parts.update(src.parts or {})
            parts.info.update(src.info or {})
            parts.rules.append(src.rule)
    _explicit(parts, {"calibration": calibration, "validation": validation, "test": test,
                      "train": train}, common, seed)
    if single is not None:
        _cut(parts, single, fractions, seed)
    if "calibration" not in parts.parts:
        raise DataSpecError("no calibration data: give a data source (--data) or calibration "
                            "data (--calibration-data)")
    _apply_caps(parts, sizes, seed)
    if "train" not in parts.parts:
        parts.parts["train"] = parts.parts["calibration"]
        cal = parts.info["calibration"]
        parts.info["train"] = SplitInfo("train", cal.size, cal.labelled, cal.source,
                                        f"the calibration data ({cal.description})")
    if require_labels:
        _check_labels(parts.info)
    out = DataSplits(parts.parts, parts.info, rule="; ".join(r for r in parts.rules if r),
                     classes=parts.classes)
    if check_overlap:  # built-in CIFAR-10 / MNIST parts stay lazy: disjoint by construction
        check_disjoint({r: v for r, v in parts.parts.items() if not isinstance(v, _Lazy)},
                       {r: parts.info[r].source for r in parts.info})
    return out


# ------------------------------------------------------------------ model / data check
class _Reached(Exception):
    pass


_FIRST_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def _batch_of_one(data: Any) -> Any:
    item = _first_item(data)
    x = item[0] if isinstance(item, (tuple, list)) else item
    if not isinstance(x, Tensor):
        return x
    return x if isinstance(data, DataLoader) or not hasattr(data, "__getitem__") \
        else x.unsqueeze(0)


def check_model_input(model: nn.Module, data: Any, *, model_name: str = "the model",
                      data_name: str = "the data", num_classes: int | None = None) -> None:
    """Run one input of ``data`` through ``model`` and explain what does not fit.

    Checks the input of the first convolution / linear layer the model runs (channels
    or features), that the whole forward pass works, and, with ``num_classes``, that
    the output has a score per class.

    Raises:
        DataSpecError: one line naming the model, the data, the shapes and the fix.
    """
    if isinstance(data, DataSplits):
        data = data.validation if data.validation is not None else data.calibration
    x = _batch_of_one(data)
    seen: dict[str, Any] = {}

    def hook(module: nn.Module, args: tuple) -> None:
        if "module" not in seen and args and isinstance(args[0], Tensor):
            seen["module"], seen["shape"] = module, tuple(args[0].shape)

    names = {m: n for n, m in model.named_modules()}
    handles = [m.register_forward_pre_hook(hook) for m in model.modules()
               if isinstance(m, _FIRST_LAYERS)]
    was_training = model.training
    model.eval()
    shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
    try:
        with torch.no_grad():
            out = model(x)
        error = None
    except Exception as err:  # the model's own error: explained below
        out, error = None, err
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    module = seen.get("module")
    if module is not None:
        got = seen["shape"]
        if isinstance(module, nn.Linear):
            want, have, unit = module.in_features, got[-1] if got else None, "features"
        else:
            want, have, unit = module.in_channels, got[1] if len(got) > 1 else None, "channels"
        if have is not None and want and have != want:
            raise DataSpecError(
                f"{data_name} gives inputs of shape {shape} but the first layer of {model_name} "
                f"({names.get(module, type(module).__name__)}) expects {want} {unit} and gets "
                f"{have}; match the data to the model (image folders: --channels {want} or a "
                "--preset; tensors files: save x with that many channels)")
    if error is not None:
        raise DataSpecError(f"{model_name} fails on one input of {data_name} (shape {shape}): "
                            f"{describe_exception(error)}; check the input size and "
                            "preprocessing (--image-size, --preset)") from error
    if num_classes is not None and isinstance(out, Tensor) and out.dim() == 2 \
            and out.shape[1] < num_classes:
        raise DataSpecError(f"{model_name} outputs {out.shape[1]} scores per input but "
                            f"{data_name} has {num_classes} classes; build the model for "
                            f"{num_classes} classes (e.g. --model-kwargs num_classes="
                            f"{num_classes})")

"""CIFAR-10 from the files in ``<data>/cifar10`` and the standard benchmark protocol.

Files (see ``shared/data/SOURCES.md``):

* ``cifar10_test_subset.npz`` - official test images 0..999, lossless. **The report set.**
* ``cifar10_train_subset.npz`` - ``data_batch_1[0:4000]``, lossless.
* ``cifar10_jpeg_q75_train.npz`` - all 50,000 training images as JPEG (quality ~75), sorted
  by class, then by ``file_index`` (the official order within the class).

The JPEG set contains JPEG copies of the 4,000 lossless training images: for class ``c``,
the JPEG files with ``file_index < n_c`` (``n_c`` = number of class-``c`` images in
``data_batch_1[0:4000]``) are exactly those images, in the same order (checked: PSNR >= 23 dB
for all 4,000 pairs, ~10 dB for non-pairs). :func:`jpeg_indices_of_train_subset` gives that map;
the protocol keeps them out of the validation split.

All datasets normalise with the akamaster statistics ``mean=(0.485, 0.456, 0.406)``,
``std=(0.229, 0.224, 0.225)`` applied to ``pixels / 255`` and yield float32 ``(3, 32, 32)``.
"""

from __future__ import annotations

import io
from functools import cached_property

import numpy as np

from bitsmith.atomic import atomic_path
from bitsmith.data.datasets import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    ArrayImageDataset,
    concat_datasets,
)
from bitsmith.data.paths import cache_dir, data_file

TEST_FILE = "cifar10/cifar10_test_subset.npz"
TRAIN_FILE = "cifar10/cifar10_train_subset.npz"
JPEG_FILE = "cifar10/cifar10_jpeg_q75_train.npz"
NUM_JPEG = 50_000

_NPZ_MEMO: dict[tuple[str, str], np.ndarray] = {}
_JPEG_MEMO: dict[str, np.ndarray] = {}


def _npz_array(relpath: str, key: str) -> np.ndarray:
    """One array of a data-folder ``.npz`` (memoised per process)."""
    path = data_file(relpath)
    memo_key = (str(path), key)
    if memo_key not in _NPZ_MEMO:
        with np.load(path, allow_pickle=False) as z:
            if key not in z.files:
                raise KeyError(f"{path} has no array {key!r} (has {z.files})")
            _NPZ_MEMO[memo_key] = z[key]
    return _NPZ_MEMO[memo_key]


def clear_memory_cache() -> None:
    """Drop the arrays memoised in this process (decoded JPEGs are ~150 MB)."""
    _NPZ_MEMO.clear()
    _JPEG_MEMO.clear()


def _dataset(images: np.ndarray, labels: np.ndarray, augment: bool, name: str
             ) -> ArrayImageDataset:
    return ArrayImageDataset(images, labels, CIFAR10_MEAN, CIFAR10_STD, augment=augment,
                             pad=4, flip=True, name=name)


def cifar10_test_subset(augment: bool = False) -> ArrayImageDataset:
    """Official CIFAR-10 test images 0..999, lossless (the report set; 100 +/- ~10 per class).

    Items: float32 ``(3, 32, 32)`` normalised image, int64 label. Never tune on it.
    """
    return _dataset(_npz_array(TEST_FILE, "images"), _npz_array(TEST_FILE, "labels"),
                    augment, "cifar10-test1000")


def cifar10_train_subset(augment: bool = False) -> ArrayImageDataset:
    """``data_batch_1[0:4000]``, lossless (4,000 training images; calibration set)."""
    return _dataset(_npz_array(TRAIN_FILE, "images"), _npz_array(TRAIN_FILE, "labels"),
                    augment, "cifar10-train4000")


def cifar10_jpeg_labels() -> np.ndarray:
    """Labels ``(50000,)`` int64 of the JPEG training set (no decoding; sorted by class)."""
    return _npz_array(JPEG_FILE, "labels").astype(np.int64)


def jpeg_indices_of_train_subset() -> np.ndarray:
    """For each of the 4,000 lossless training images, the index of its JPEG copy.

    Returns:
        int64 ``(4000,)``: ``jpeg[out[i]]`` is a JPEG copy of ``cifar10_train_subset()[i]``.
    """
    jl = cifar10_jpeg_labels()
    fidx = _npz_array(JPEG_FILE, "file_index").astype(np.int64)
    tl = _npz_array(TRAIN_FILE, "labels").astype(np.int64)
    out = np.empty(len(tl), dtype=np.int64)
    for c in range(10):
        rows = np.nonzero(tl == c)[0]
        jrows = np.nonzero(jl == c)[0]
        jrows = jrows[np.argsort(fidx[jrows], kind="stable")]
        out[rows] = jrows[: len(rows)]
    return out


def _decode(jpeg: np.ndarray, offsets: np.ndarray, indices: np.ndarray) -> np.ndarray:
    from PIL import Image

    out = np.empty((len(indices), 32, 32, 3), dtype=np.uint8)
    for k, i in enumerate(indices):
        with Image.open(io.BytesIO(jpeg[offsets[i]:offsets[i + 1]].tobytes())) as im:
            out[k] = np.asarray(im.convert("RGB"))
    return out


def decode_cifar10_jpeg(indices: np.ndarray | None = None, cache: bool = True) -> np.ndarray:
    """Decode (some of) the 50,000 JPEG training images with PIL.

    The full decode takes a few seconds; it is memoised in the process and, with
    ``cache=True``, stored as ``.npy`` under :func:`bitsmith.data.paths.cache_dir`
    keyed by the source file's size + mtime and the Pillow version (failures to
    write the cache are ignored). Small requests (<= 10,000 images) with no full
    decode available are decoded directly.

    Args:
        indices: which images (default: all, in file order).
        cache: use/create the on-disk cache.

    Returns:
        uint8 ``(N, 32, 32, 3)`` HWC RGB.
    """
    import PIL

    path = data_file(JPEG_FILE)
    st = path.stat()
    key = f"cifar10_jpeg_q75_train-{st.st_size}-{st.st_mtime_ns}-pil{PIL.__version__}"
    full = _JPEG_MEMO.get(key)
    cfile = cache_dir() / f"{key}.npy"
    if full is None and cache and cfile.exists():
        try:
            arr = np.load(cfile, allow_pickle=False)
            if arr.shape == (NUM_JPEG, 32, 32, 3) and arr.dtype == np.uint8:
                full = _JPEG_MEMO[key] = arr
        except (OSError, ValueError):
            full = None
    if full is None:
        jpeg = _npz_array(JPEG_FILE, "jpeg")
        offsets = _npz_array(JPEG_FILE, "offsets")
        if indices is not None and len(indices) <= 10_000:
            return _decode(jpeg, offsets, np.asarray(indices, dtype=np.int64))
        full = _decode(jpeg, offsets, np.arange(len(offsets) - 1))
        _JPEG_MEMO[key] = full
        if cache:
            try:
                with atomic_path(cfile) as tmp, open(tmp, "wb") as f:
                    np.save(f, full)
            except OSError:
                pass
    if indices is None:
        return full
    return full[np.asarray(indices, dtype=np.int64)]


def cifar10_jpeg_train(augment: bool = False, indices: np.ndarray | None = None,
                       cache: bool = True) -> ArrayImageDataset:
    """The 50,000 CIFAR-10 training images as JPEG-q75 decodes (sorted by class!).

    For training / fine-tuning / calibration experiments only, never for reporting.

    Args:
        augment: random crop (pad 4) + horizontal flip per item.
        indices: optional subset (indices into the 50,000).
        cache: see :func:`decode_cifar10_jpeg`.
    """
    labels = cifar10_jpeg_labels()
    if indices is not None:
        indices = np.asarray(indices, dtype=np.int64)
        labels = labels[indices]
    return _dataset(decode_cifar10_jpeg(indices, cache=cache), labels, augment,
                    "cifar10-jpeg-train")


def _stratified_pick(labels: np.ndarray, candidates: np.ndarray, n: int,
                     rng: np.random.Generator) -> np.ndarray:
    """``n`` of ``candidates`` split as evenly as possible over the 10 classes, shuffled."""
    per = np.full(10, n // 10)
    per[: n % 10] += 1
    picks = []
    for c in range(10):
        pool = candidates[labels[candidates] == c]
        if per[c] > len(pool):
            raise ValueError(f"class {c}: asked for {per[c]} images, only {len(pool)} available")
        picks.append(rng.choice(pool, size=per[c], replace=False))
    out = np.concatenate(picks)
    return out[rng.permutation(len(out))]


class Cifar10Protocol:
    """The standard CIFAR-10 benchmark splits (``shared/data/SOURCES.md``).

    ==============  =====================================================  =========================
    split           data                                                   used for
    ==============  =====================================================  =========================
    ``calibration`` lossless ``data_batch_1[0:4000]`` (or ``n_calib`` of    observer / range
                    them, stratified)                                      calibration
    ``val``         ``n_val`` JPEG training images, stratified, fixed       search-time validation,
                    seed, excluding the JPEG copies of the 4,000 lossless  early stopping, any
                    images                                                 tuning decision
    ``finetune``    the 4,000 lossless + every JPEG image that is neither  QAT / fine-tuning /
                    in ``val`` nor a copy of a lossless one (augmented)    distillation
    ``test``        official test images 0..999, lossless                  reporting only
    ==============  =====================================================  =========================

    Never tune on ``test``. Splits are built lazily on first access (``val`` decodes only
    its own images; ``finetune`` decodes the whole JPEG set, a few seconds, cached).
    The ``val`` order is a fixed random permutation, so any prefix is roughly stratified.

    Args:
        n_val: size of the validation split (default 5,000 = 500 per class).
        seed: seed of the validation (and calibration-subset) draw.
        n_calib: optional stratified subset size of the calibration split.
        augment_finetune: random crop + flip on the fine-tuning split.
        cache: on-disk cache of decoded JPEGs (see :func:`decode_cifar10_jpeg`).
    """

    SPLITS = ("calibration", "val", "finetune", "test")
    ROLES = {
        "calibration": "quantizer range calibration (lossless training images)",
        "val": "search-time validation / model selection (JPEG training images)",
        "finetune": "fine-tuning / QAT / distillation (training images, augmented)",
        "test": "final reported accuracy only - never tune on it (lossless test images)",
    }

    def __init__(self, n_val: int = 5000, seed: int = 0, n_calib: int | None = None,
                 augment_finetune: bool = True, cache: bool = True) -> None:
        self.n_val, self.seed, self.n_calib = n_val, seed, n_calib
        self.augment_finetune, self.cache = augment_finetune, cache
        jl = cifar10_jpeg_labels()
        self.calib_jpeg_copies = np.sort(jpeg_indices_of_train_subset())
        free = np.setdiff1d(np.arange(len(jl)), self.calib_jpeg_copies)
        if not 0 < n_val <= len(free):
            raise ValueError(f"n_val must be in 1..{len(free)}, got {n_val}")
        rng = np.random.default_rng(seed)
        self.val_jpeg_indices = _stratified_pick(jl, free, n_val, rng)
        self.finetune_jpeg_indices = np.setdiff1d(free, self.val_jpeg_indices)
        tl = _npz_array(TRAIN_FILE, "labels").astype(np.int64)
        if n_calib is None:
            self.calib_indices = np.arange(len(tl))
        else:
            if not 0 < n_calib <= len(tl):
                raise ValueError(f"n_calib must be in 1..{len(tl)}, got {n_calib}")
            self.calib_indices = np.sort(_stratified_pick(
                tl, np.arange(len(tl)), n_calib, np.random.default_rng(seed + 1)))

    @cached_property
    def calibration(self) -> ArrayImageDataset:
        """Lossless training images, no augmentation."""
        ds = cifar10_train_subset()
        if self.n_calib is None:
            ds.name = "cifar10-calibration"
            return ds
        return ds.subset(self.calib_indices, name="cifar10-calibration")

    @cached_property
    def val(self) -> ArrayImageDataset:
        """Search-time validation: fixed JPEG training images, no augmentation."""
        ds = cifar10_jpeg_train(indices=self.val_jpeg_indices, cache=self.cache)
        ds.name = "cifar10-val-jpeg"
        return ds

    @cached_property
    def finetune(self) -> ArrayImageDataset:
        """Lossless 4,000 + the JPEG images outside ``val`` (augmented by default)."""
        lossless = cifar10_train_subset()
        jpeg = cifar10_jpeg_train(indices=self.finetune_jpeg_indices, cache=self.cache)
        return concat_datasets([lossless, jpeg], augment=self.augment_finetune,
                               name="cifar10-finetune")

    @cached_property
    def test(self) -> ArrayImageDataset:
        """The report set: lossless test images 0..999, no augmentation."""
        return cifar10_test_subset()

    def __getitem__(self, name: str) -> ArrayImageDataset:
        aliases = {"calib": "calibration", "validation": "val", "train": "finetune"}
        name = aliases.get(name, name)
        if name not in self.SPLITS:
            raise KeyError(f"unknown split {name!r}; use one of {self.SPLITS}")
        return getattr(self, name)

    def sizes(self) -> dict[str, int]:
        """Images per split (computed without decoding anything)."""
        return {"calibration": len(self.calib_indices), "val": len(self.val_jpeg_indices),
                "finetune": 4000 + len(self.finetune_jpeg_indices), "test": 1000}

    def describe(self) -> dict[str, dict[str, object]]:
        """Per split: size and role (JSON-serialisable)."""
        s = self.sizes()
        return {k: {"n": s[k], "role": self.ROLES[k]} for k in self.SPLITS}

    def __repr__(self) -> str:
        return f"Cifar10Protocol(sizes={self.sizes()}, seed={self.seed})"


def cifar10_protocol(n_val: int = 5000, seed: int = 0, n_calib: int | None = None,
                     augment_finetune: bool = True, cache: bool = True) -> Cifar10Protocol:
    """The named CIFAR-10 splits ``calibration`` / ``val`` / ``finetune`` / ``test``.

    See :class:`Cifar10Protocol`. Access as attributes or ``protocol["val"]``.
    """
    return Cifar10Protocol(n_val=n_val, seed=seed, n_calib=n_calib,
                           augment_finetune=augment_finetune, cache=cache)


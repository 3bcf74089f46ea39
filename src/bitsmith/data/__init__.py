"""Datasets: sklearn digits (offline), CIFAR-10 and MNIST from ``shared/data``, torchvision.

See ``docs/models_and_data.md``. The data folder is found by
:func:`bitsmith.data.paths.data_root` (``$BITSMITH_DATA``, else ``../shared/data``
next to the repository).
"""

from bitsmith.data.cifar import (
    Cifar10Protocol,
    cifar10_jpeg_labels,
    cifar10_jpeg_train,
    cifar10_protocol,
    cifar10_test_subset,
    cifar10_train_subset,
    clear_memory_cache,
    decode_cifar10_jpeg,
    jpeg_indices_of_train_subset,
)
from bitsmith.data.datasets import (
    CIFAR10_CLASSES,
    CIFAR10_MEAN,
    CIFAR10_STD,
    MNIST_MEAN,
    MNIST_STD,
    ArrayImageDataset,
    concat_datasets,
    make_loader,
    random_crop_flip,
)
from bitsmith.data.digits import DigitsSplits, digits_splits
from bitsmith.data.mnist import (
    IDX_IMAGES_MAGIC,
    IDX_LABELS_MAGIC,
    load_mnist_arrays,
    mnist,
    read_idx,
)
from bitsmith.data.paths import cache_dir, data_file, data_root, find_data_file
from bitsmith.data.tv import torchvision_dataset

__all__ = [
    "CIFAR10_CLASSES", "CIFAR10_MEAN", "CIFAR10_STD", "IDX_IMAGES_MAGIC", "IDX_LABELS_MAGIC",
    "MNIST_MEAN", "MNIST_STD", "ArrayImageDataset", "Cifar10Protocol", "DigitsSplits",
    "cache_dir", "cifar10_jpeg_labels", "cifar10_jpeg_train", "cifar10_protocol",
    "cifar10_test_subset", "cifar10_train_subset", "clear_memory_cache", "concat_datasets",
    "data_file", "data_root", "decode_cifar10_jpeg", "digits_splits", "find_data_file",
    "jpeg_indices_of_train_subset", "load_mnist_arrays", "make_loader", "mnist",
    "random_crop_flip", "read_idx", "torchvision_dataset",
]

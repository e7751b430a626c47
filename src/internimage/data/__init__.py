"""Datasets and transforms: image folders, file lists and iNaturalist jsons that skip unreadable images,
Fashion-MNIST offline."""

from .datasets import (
    IMAGE_EXTENSIONS,
    FileListDataset,
    ImageFolderDataset,
    INaturalistDataset,
    SkipCollate,
    build_image_dataset,
    collect_images,
    inaturalist_meta,
    load_image,
)
from .fashion_mnist import FASHION_MNIST_CLASSES, find_fashion_mnist, load_fashion_mnist
from .transforms import build_eval_transform, build_train_transform

__all__ = [
    "FASHION_MNIST_CLASSES",
    "IMAGE_EXTENSIONS",
    "collect_images",
    "inaturalist_meta",
    "FileListDataset",
    "INaturalistDataset",
    "ImageFolderDataset",
    "SkipCollate",
    "build_eval_transform",
    "build_image_dataset",
    "build_train_transform",
    "find_fashion_mnist",
    "load_image",
    "load_fashion_mnist",
]

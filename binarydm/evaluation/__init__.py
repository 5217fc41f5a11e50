"""Evaluation: FID / KID through clean-fid and torchmetrics with offline Inception weights, and a
disk cache of reference features."""

from .fid import (
    DatasetNotFound,
    cleanfid_compare_folders,
    cleanfid_folder_features,
    evaluate,
    extract_features,
    fashion_mnist,
    fid_from_features,
    kid_from_features,
    load_folder,
    reference_features,
    reference_images,
    torchmetrics_fid,
)
from .paired import paired_mse
from .inception import (
    FeatureExtractor,
    InceptionV3,
    InceptionWeightsNotFound,
    TinyFeatures,
    find_weights,
    get_extractor,
)

__all__ = [
    "DatasetNotFound", "FeatureExtractor", "InceptionV3", "InceptionWeightsNotFound", "TinyFeatures",
    "cleanfid_compare_folders", "cleanfid_folder_features", "evaluate", "extract_features", "fashion_mnist",
    "fid_from_features", "find_weights", "get_extractor", "kid_from_features", "load_folder",
    "paired_mse", "reference_features", "reference_images", "torchmetrics_fid",
]

"""Datasets and transforms."""
from .datasets import (DATASETS, VALIDATION_SEED, DatasetInfo, DatasetNotFoundError,
                       build_dataset, dataset_info, digits_arrays, stratified_subset, targets_of,
                       validation_indices)

__all__ = ["DATASETS", "VALIDATION_SEED", "DatasetInfo", "DatasetNotFoundError",
           "build_dataset", "dataset_info", "digits_arrays", "stratified_subset", "targets_of",
           "validation_indices"]

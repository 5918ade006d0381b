"""Datasets and transforms."""
from .datasets import (DATASETS, DatasetInfo, DatasetNotFoundError, build_dataset,
                       dataset_info, digits_arrays, stratified_subset, targets_of)

__all__ = ["DATASETS", "DatasetInfo", "DatasetNotFoundError", "build_dataset", "dataset_info",
           "digits_arrays", "stratified_subset", "targets_of"]

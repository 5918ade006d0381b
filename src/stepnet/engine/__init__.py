"""Training and evaluation: configs and recipes, the trainer, checkpoints, distributed set-up."""
from .checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from .config import RECIPES, TrainConfig, resolve_config
from .distributed import DistributedContext, setup_distributed, teardown_distributed
from .trainer import NonFiniteLossError, Trainer, parameter_groups, read_metrics, write_report

__all__ = ["DistributedContext", "NonFiniteLossError", "RECIPES", "TrainConfig", "Trainer",
           "load_checkpoint", "model_from_checkpoint", "parameter_groups", "read_metrics",
           "resolve_config", "save_checkpoint", "setup_distributed", "teardown_distributed",
           "write_report"]

"""Training and evaluation: configs and recipes, tasks, the one training loop, checkpoints,
distributed set-up."""
from .checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from .config import (RECIPES, TrainConfig, add_config_arguments, load_config_file,
                     overrides_from_args, resolve_config)
from .distributed import (DistributedContext, resolve_device, setup_distributed,
                          teardown_distributed)
from .tasks import Task, create_task, task_of_checkpoint
from .trainer import (LRSchedule, NonFiniteLossError, Trainer, build_optimizer,
                      parameter_groups, read_metrics, write_report)

__all__ = ["DistributedContext", "LRSchedule", "NonFiniteLossError", "RECIPES", "Task",
           "TrainConfig", "Trainer", "add_config_arguments", "build_optimizer", "create_task",
           "load_checkpoint", "load_config_file", "model_from_checkpoint", "overrides_from_args",
           "parameter_groups", "read_metrics", "resolve_config", "resolve_device",
           "save_checkpoint", "setup_distributed", "task_of_checkpoint", "teardown_distributed",
           "write_report"]

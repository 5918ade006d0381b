"""One training configuration, declared once.

:class:`TrainConfig` is the single source of every setting of a run: each field carries its help
text, its choices and its group beside its default, and the command-line flags
(:func:`add_config_arguments`), the ``--set key=value`` overrides (:func:`parse_assignment`) and
config files (``stepnet train --config RUN/config.json``) are all generated from it. Named
recipes (the paper's Table 6 and the CPU defaults) are dicts of field values.

The fully resolved configuration is saved as ``config.json`` in every run directory and inside
every checkpoint.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..fast import FUSE_MODES
from .trackers import TRACKERS

TASKS = ("classification", "sudoku", "detection")
OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("multistep", "cosine", "constant")
AMP_MODES = ("off", "auto", "bf16", "fp16")
DEVICES_HELP = "auto (cuda when available, else cpu), cpu, cuda, cuda:1, ..."
WEIGHT_DECAY_EXEMPT = ("timm", "requested")


def option(default: Any, help: str, *, group: str, choices: tuple[str, ...] | None = None,
           bookkeeping: bool = False, resumable: bool = False) -> Any:
    """A config field with its documentation.

    ``bookkeeping`` fields (output folder, workers, device, ...) say where and how a run is
    executed, not what it computes: runs that differ only in them belong to one group in
    ``summarize``, and ``--resume`` may change them. ``resumable`` marks the other fields that
    ``--resume`` may change (``epochs``: the schedule is recomputed for the new length).
    """
    metadata = {"help": help, "group": group, "choices": choices, "bookkeeping": bookkeeping,
                "resumable": resumable or bookkeeping}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class TrainConfig:
    """Every setting of a training run. ``batch_size`` is the global batch (split across
    processes under torchrun); ``milestones`` are epochs of the ``multistep`` schedule; the
    learning rate follows the schedule per iteration, after a linear warm-up."""

    # -- what is trained --------------------------------------------------------------------
    task: str = option("classification", "what is learned: image classification, Sudoku with "
                       "looped self-attention, or object detection", group="task",
                       choices=TASKS)
    recipe: str = option("digits", "the named base settings this config started from",
                         group="task", bookkeeping=True)
    model: str = option("resnet20", "registered model name (stepnet models)", group="model")
    attention: str = option("none", "step-size module (stepnet attention)", group="model")
    attention_options: dict[str, Any] = option({}, "JSON options of the step-size module, "
                                               "e.g. '{\"reduction\": 8}'", group="model")
    attention_blocks: list[int] | None = option(None, "only these block indices get the "
                                                "step-size module (default: every block)",
                                                group="model")
    norm: str | None = option(None, "classification: the backbone's normalisation (default: "
                              "the model's own): bn | iebn for ResNets; layernorm for ViTs "
                              "(Sudoku's loop norm is --loop-norm)", group="model")
    step_branches: str | None = option(None, "ViTs: which residuals get the step size: attn | "
                                       "mlp | both | mixer (default: the model's)",
                                       group="model")
    model_options: dict[str, Any] = option({}, "JSON keyword arguments of the model builder, "
                                           "e.g. '{\"preact\": false}'", group="model")
    # -- data -------------------------------------------------------------------------------
    dataset: str = option("digits", "dataset name (classification: cifar10, cifar100, digits, "
                          "imagefolder, stl10; sudoku: sudoku (generated puzzles) or satnet "
                          "(SATNet's features.pt/labels.pt in --data-dir); detection: coco, a "
                          "COCO tree)", group="data")
    data_dir: str | None = option(None, "dataset root folder", group="data")
    download: bool = option(False, "let torchvision download the dataset (needs internet)",
                            group="data", bookkeeping=True)
    train_subset: int | None = option(None, "train on a stratified subset of this many images",
                                      group="data")
    val_split: int | None = option(None, "classification: hold out this many training "
                                   "images, class-stratified and the same for every run and "
                                   "seed, as the validation split that selects best.pt (the "
                                   "test split selects nothing)", group="data")
    bad_images: str = option("stop", "classification: an unreadable (corrupt or truncated) "
                             "image stops the run naming it (stop), or is left out with a "
                             "warning and a count (skip)", group="data",
                             choices=("stop", "skip"))
    cache_images: bool = option(False, "decode a small-image imagefolder tree once into memory "
                                "(use with --workers 0)", group="data", bookkeeping=True)
    auto_augment: str = option("none", "extra training augmentation: torchvision's AutoAugment "
                               "(CIFAR-10 policy) or RandAugment (2 ops, magnitude 9)",
                               group="data", choices=("none", "autoaugment", "randaugment"))
    workers: int = option(0, "DataLoader worker processes", group="data", bookkeeping=True)
    eval_batch_size: int = option(256, "batch size of evaluation", group="data",
                                  bookkeeping=True)
    # -- optimisation -----------------------------------------------------------------------
    epochs: int = option(15, "training epochs", group="optimization", resumable=True)
    batch_size: int = option(64, "global training batch size", group="optimization")
    grad_accum_steps: int = option(1, "cut each batch into this many chunks and accumulate "
                                   "their gradients before one optimizer step (--batch-size "
                                   "stays the batch of a step; batch norms see the chunks)",
                                   group="optimization")
    optimizer: str = option("sgd", "optimizer", group="optimization", choices=OPTIMIZERS)
    lr: float = option(0.05, "peak learning rate (for --lr-reference-batch images, if given)",
                       group="optimization")
    lr_reference_batch: int | None = option(None, "scale --lr linearly: the lr used is "
                                            "lr x batch-size / this (e.g. 0.02 for 16 images)",
                                            group="optimization")
    momentum: float = option(0.9, "SGD momentum", group="optimization")
    nesterov: bool = option(False, "SGD with Nesterov momentum", group="optimization")
    betas: list[float] = option([0.9, 0.999], "AdamW betas", group="optimization")
    weight_decay: float = option(1e-4, "weight decay", group="optimization")
    weight_decay_exempt: str = option(
        "timm", "which parameters skip weight decay: timm = biases, norm weights and other 1-D "
        "parameters, position/cls embeddings and what modules ask for (no_weight_decay); "
        "requested = only what modules ask for (the paper's CNN baselines decay the rest)",
        group="optimization", choices=WEIGHT_DECAY_EXEMPT)
    schedule: str = option("cosine", "learning-rate schedule, stepped per iteration",
                           group="optimization", choices=SCHEDULES)
    milestones: list[int] = option([], "epochs at which multistep multiplies the lr by gamma",
                                   group="optimization")
    gamma: float = option(0.1, "multistep factor", group="optimization")
    min_lr: float = option(0.0, "cosine: the lr it ends at", group="optimization")
    warmup_epochs: float = option(0.0, "linear warm-up length in epochs (converted to "
                                  "iterations)", group="optimization")
    warmup_iters: int = option(0, "linear warm-up length in iterations (instead of "
                               "--warmup-epochs)", group="optimization")
    clip_grad_norm: float = option(0.0, "clip the gradient norm to this (0: off)",
                                   group="optimization")
    ema_decay: float = option(0.0, "keep an exponential moving average of the weights with "
                              "this decay, evaluated and checkpointed beside them (0: off)",
                              group="optimization")
    label_smoothing: float = option(0.0, "label smoothing of the cross-entropy",
                                    group="optimization")
    mixup_alpha: float = option(0.0, "classification: MixUp with this Beta(alpha, alpha) "
                                "(torchvision v2; 0: off)", group="optimization")
    cutmix_alpha: float = option(0.0, "classification: CutMix with this Beta(alpha, alpha) "
                                 "(torchvision v2; 0: off; with MixUp, one of the two per batch)",
                                 group="optimization")
    # -- detection --------------------------------------------------------------------------
    min_size: int = option(800, "detection: shorter image side after resizing", group="detection")
    max_size: int = option(1333, "detection: longest image side after resizing",
                           group="detection")
    trainable_layers: int | None = option(None, "detection: trainable backbone stages 0..5 "
                                          "(default: 3 from a backbone checkpoint, else 5)",
                                          group="detection")
    backbone_checkpoint: str | None = option(None, "detection: a classification checkpoint "
                                             "(stepnet train, ImageNet recipe) that initialises "
                                             "the detector's body", group="detection")
    # -- sudoku -----------------------------------------------------------------------------
    dim: int = option(128, "sudoku: token width D", group="sudoku")
    heads: int = option(4, "sudoku: attention heads", group="sudoku")
    loops: int = option(16, "sudoku: loops of the recurrent block in training", group="sudoku")
    symmetric: bool = option(False, "sudoku: energy-constrained attention (W_K = W_Q, "
                             "W_O = W_V^T)", group="sudoku")
    core: str = option("itrsa", "sudoku: the recurrent core: itrsa (looped multi-head "
                       "attention, layout below), energy (one symmetric head, W_Q W_K^T = "
                       "W_V, exp kernel on the sphere: has an energy) or akorn (Kuramoto "
                       "oscillators coupled by attention)", group="sudoku",
                       choices=("itrsa", "energy", "akorn"))
    itrsa_preset: str = option("paper2", "sudoku: layout of the loop: paper2 = Norm(X + eta (C "
                               "+ MSA(X))), akorn = X + MSA(LN(X)) with biases and an MLP after "
                               "the loop (the AKOrN code's ItrSA)", group="sudoku",
                               choices=("paper2", "akorn"))
    loop_norm: str | None = option(None, "sudoku: the loop's norm: rmsnorm | layernorm | "
                                   "sphere | none (default: the preset's)", group="sudoku")
    placement: str | None = option(None, "sudoku: where the norm sits: post | pre | none "
                                   "(default: the preset's)", group="sudoku")
    mlp: str | None = option(None, "sudoku: an MLP residual: none | inside (every loop) | after "
                             "(once after the loop) (default: the preset's)", group="sudoku")
    bias: bool | None = option(None, "sudoku: biases on the attention projections (default: "
                               "the preset's)", group="sudoku")
    input_injection: bool | None = option(None, "sudoku: add the embedded board C to every "
                                          "loop's update (default: the preset's)",
                                          group="sudoku")
    loss_cells: str = option("blanks", "sudoku: cells in the cross-entropy: the blanks, or all "
                             "81 (as the AKOrN code)", group="sudoku",
                             choices=("blanks", "all"))
    loss_loops: str = option("last", "sudoku: loops whose read-out enters the loss: the last "
                             "only, or the mean over every loop (deep supervision, as recurrent "
                             "relational networks)", group="sudoku", choices=("last", "all"))
    position: str = option("structured", "sudoku: cell embedding, row + column + box tables "
                           "or a free table", group="sudoku", choices=("structured", "learned"))
    train_puzzles: int = option(9000, "sudoku: generated training puzzles", group="sudoku")
    val_puzzles: int = option(0, "sudoku: generated validation puzzles (seed + 3, none equal "
                              "to a training or test board) that select best.pt; 0: none, no "
                              "best.pt (the test boards select nothing)", group="sudoku")
    test_puzzles: int = option(1000, "sudoku: generated test puzzles (in distribution and "
                               "hard)", group="sudoku")
    givens: list[int] = option([31, 42], "sudoku: range of givens of training and test "
                               "puzzles", group="sudoku")
    hard_givens: list[int] = option([24, 30], "sudoku: range of givens of the harder, "
                                    "out-of-distribution test puzzles", group="sudoku")
    ood: str | None = option(None, "sudoku: the out-of-distribution test boards: generated "
                             "with --hard-givens (default), or rrn:FILE, a CSV of "
                             "'puzzle,solution' lines (RRN's format)", group="sudoku")
    eval_loops: list[int] = option([16, 32, 64], "sudoku: loop counts of the final evaluation",
                                   group="sudoku")
    spectral_weight: float = option(0.0, "sudoku: weight of the spectral regulariser "
                                    "(paper: 1e-4)", group="sudoku")
    # -- where and how it runs ---------------------------------------------------------------
    seed: int = option(0, "random seed (weights, data order, augmentation)", group="run")
    device: str = option("auto", DEVICES_HELP, group="run", bookkeeping=True)
    amp: str = option("off", "mixed precision: auto (bf16 where supported, else fp16), bf16, "
                      "fp16 (CUDA only); on CPU bf16 autocast", group="run", choices=AMP_MODES)
    sync_bn: bool = option(False, "under torchrun on CUDA: synchronise the backbone's batch "
                           "statistics across processes (SyncBatchNorm; the step-size modules' "
                           "descriptor norms keep per-process statistics)", group="run")
    channels_last: bool = option(False, "channels-last memory format", group="run",
                                 bookkeeping=True)
    compile: bool = option(False, "torch.compile the model (pays off on long GPU runs)",
                           group="run", bookkeeping=True)
    fuse: str = option("auto", "the fast paths (stepnet.fast.fuse; the same values to float "
                       "rounding): auto (on the CPU, where they measured faster), on, off "
                       "(the plain model)", group="run", choices=FUSE_MODES, bookkeeping=True)
    log_interval: int = option(50, "iterations between reads of the running loss (the only "
                               "host synchronisations of a training epoch)", group="run",
                               bookkeeping=True)
    trackers: list[str] = option([], "also log each epoch's metrics to these experiment "
                                 "trackers (each when installed): tensorboard "
                                 "(<output>/tensorboard), mlflow (MLFLOW_TRACKING_URI, else "
                                 "<output>/mlflow.db), wandb (WANDB_PROJECT, WANDB_MODE)",
                                 group="run", choices=TRACKERS, bookkeeping=True)
    output: str = option("runs/default", "run directory", group="run", bookkeeping=True)

    def validate(self) -> None:
        """Raise ``ValueError`` on values no run can use, naming the flag."""
        for name, spec in FIELDS.items():
            choices = spec.metadata["choices"]
            values = getattr(self, name)
            for value in values if isinstance(values, list) else [values]:
                if choices and value not in choices:
                    raise ValueError(f"unknown {name.replace('_', '-')} {value!r}; "
                                     f"valid: {', '.join(choices)}")
        for name in ("epochs", "batch_size", "grad_accum_steps", "eval_batch_size",
                     "log_interval", "dim", "heads",
                     "loops", "train_puzzles", "test_puzzles", "min_size", "max_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{flag(name)} must be at least 1, got {getattr(self, name)}")
        for name, value in self.to_dict().items():
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"{flag(name)} must be a finite number, got {value}")
        if not self.lr > 0:
            raise ValueError(f"--lr must be positive, got {self.lr}")
        for name in ("weight_decay", "warmup_epochs", "warmup_iters", "clip_grad_norm",
                     "min_lr", "spectral_weight", "workers", "mixup_alpha", "cutmix_alpha"):
            if getattr(self, name) < 0:
                raise ValueError(f"{flag(name)} must be >= 0, got {getattr(self, name)}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"--momentum must be in [0, 1), got {self.momentum}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"--ema-decay must be in [0, 1) (0: off), got {self.ema_decay}")
        if not 0 <= self.label_smoothing < 1:
            raise ValueError(f"--label-smoothing must be in [0, 1), got {self.label_smoothing}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"--betas takes two numbers in [0, 1), got {self.betas}")
        if self.warmup_epochs and self.warmup_iters:
            raise ValueError("give --warmup-epochs or --warmup-iters, not both")
        if self.lr_reference_batch is not None and self.lr_reference_batch < 1:
            raise ValueError(f"--lr-reference-batch must be at least 1, got "
                             f"{self.lr_reference_batch}")
        if self.trainable_layers is not None and not 0 <= self.trainable_layers <= 5:
            raise ValueError(f"--trainable-layers must be in 0..5, got {self.trainable_layers}")
        if self.min_size > self.max_size:
            raise ValueError(f"--min-size {self.min_size} is larger than --max-size "
                             f"{self.max_size}")
        if self.val_split is not None and self.val_split < 1:
            raise ValueError(f"--val-split must be positive (or none), got {self.val_split}")
        if self.val_puzzles < 0:
            raise ValueError(f"--val-puzzles must be >= 0, got {self.val_puzzles}")
        if self.val_split and self.task != "classification":
            raise ValueError(f"--val-split is for classification; the {self.task} task has no "
                             f"validation split yet")
        if self.train_subset is not None and self.train_subset < 1:
            raise ValueError(f"--train-subset must be positive, got {self.train_subset}")
        if any(m < 1 for m in self.milestones):
            raise ValueError(f"--milestones are epochs >= 1, got {self.milestones}")
        for name in ("givens", "hard_givens"):
            value = getattr(self, name)
            if len(value) != 2 or not 17 <= value[0] <= value[1] <= 80:
                raise ValueError(f"{flag(name)} takes two numbers 17 <= low <= high <= 80, "
                                 f"got {value}")
        if not self.eval_loops or min(self.eval_loops) < 1:
            raise ValueError(f"--eval-loops must list loop counts >= 1, got {self.eval_loops}")

    @property
    def scaled_lr(self) -> float:
        """The peak learning rate used: ``lr``, times batch_size / lr_reference_batch when a
        reference batch is given (the linear scaling rule)."""
        if self.lr_reference_batch:
            return self.lr * self.batch_size / self.lr_reference_batch
        return self.lr

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, path: str | Path) -> None:
        from ..atomic import atomic_write_text

        atomic_write_text(path, json.dumps(self.to_dict(), indent=1) + "\n")

    @classmethod
    def from_dict(cls, values: dict[str, Any], strict: bool = True,
                  source: str = "the config") -> TrainConfig:
        """A config from saved values. ``strict``: an unknown key is an error naming it;
        otherwise unknown keys (older or newer versions) are ignored. Values of older versions
        are upgraded (``amp`` true/false)."""
        values = _upgrade(values)
        unknown = sorted(set(values) - set(FIELDS))
        if unknown and strict:
            raise ValueError(f"{source} has unknown key{'s' if len(unknown) > 1 else ''} "
                             f"{', '.join(map(repr, unknown))}; valid keys: "
                             f"{', '.join(FIELDS)}")
        return cls(**{k: v for k, v in values.items() if k in FIELDS})


def _upgrade(values: dict[str, Any]) -> dict[str, Any]:
    """Saved values of older versions in today's form (``amp`` was a boolean; ``tensorboard:
    true`` is ``trackers: ["tensorboard"]``; a Sudoku run's loop norm was ``norm``)."""
    values = dict(values)
    if values.get("task") == "sudoku" and "loop_norm" not in values:
        values["loop_norm"] = values.pop("norm", None)
    _upgrade_amp(values)
    if "tensorboard" in values:
        if values.pop("tensorboard") is True and "tensorboard" not in values.get("trackers", []):
            values["trackers"] = list(values.get("trackers", [])) + ["tensorboard"]
    return values


def _upgrade_amp(values: dict[str, Any]) -> None:
    """``amp`` was a boolean (true: auto); changes ``values`` in place."""
    if isinstance(values.get("amp"), bool):
        values["amp"] = "auto" if values["amp"] else "off"


FIELDS: dict[str, dataclasses.Field] = {f.name: f for f in dataclasses.fields(TrainConfig)}
_TYPES: dict[str, Any] = typing.get_type_hints(TrainConfig)
BOOKKEEPING = tuple(n for n, f in FIELDS.items() if f.metadata["bookkeeping"])
RESUMABLE = tuple(n for n, f in FIELDS.items() if f.metadata["resumable"])


def flag(name: str) -> str:
    """The command-line flag of a field: ``weight_decay`` -> ``--weight-decay``."""
    return "--" + name.replace("_", "-")


# -- parsing values of a field ------------------------------------------------------------------
def _base_type(name: str) -> tuple[Any, bool]:
    """(the field's type without ``| None``, whether None is allowed)."""
    kind = _TYPES[name]
    args = typing.get_args(kind)
    if type(None) in args:
        return next(a for a in args if a is not type(None)), True
    return kind, False


def _scalar(kind: type, text: str, name: str) -> Any:
    try:
        if kind is bool:
            lowered = text.strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise ValueError
        return kind(text)
    except ValueError:
        raise ValueError(f"{flag(name)}: expected {kind.__name__}, got {text!r}") from None


def parse_value(name: str, text: str) -> Any:
    """Parse the text form of field ``name``: numbers, booleans (true/false), ``none`` for
    optional fields, JSON objects for dicts, and comma-separated or JSON lists."""
    kind, optional = _base_type(name)
    if optional and text.strip().lower() in ("none", "null", ""):
        return None
    origin = typing.get_origin(kind)
    if origin is dict:
        try:
            value = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"{flag(name)}: expected a JSON object such as "
                             f"'{{\"reduction\": 8}}', got {text!r}: {error}") from None
        if not isinstance(value, dict):
            raise ValueError(f"{flag(name)}: expected a JSON object, got {text!r}")
        return value
    if origin is list:
        (item,) = typing.get_args(kind)
        stripped = text.strip()
        if stripped.startswith("["):
            try:
                items = [str(v) for v in json.loads(stripped)]
            except (json.JSONDecodeError, TypeError):
                raise ValueError(f"{flag(name)}: expected a list such as 1,2,3 or [1, 2, 3], "
                                 f"got {text!r}") from None
        else:
            items = [t for t in stripped.replace(",", " ").split() if t]
        return [_scalar(item, t, name) for t in items]
    return _scalar(kind, text, name)


def check_value(name: str, value: Any, source: str) -> Any:
    """Type-check a value read from JSON for field ``name`` (ints accepted as floats)."""
    kind, optional = _base_type(name)
    if value is None:
        if optional:
            return None
        raise ValueError(f"{source}: {name} cannot be null")
    origin = typing.get_origin(kind) or kind
    if origin is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if origin is list and isinstance(value, (list, tuple)):
        (item,) = typing.get_args(kind)
        return [float(v) if item is float and isinstance(v, int) else v for v in value]
    if not isinstance(value, origin) or (origin is int and isinstance(value, bool)):
        raise ValueError(f"{source}: {name} must be {getattr(origin, '__name__', origin)}, "
                         f"got {value!r}")
    return value


def parse_assignment(text: str) -> tuple[str, Any]:
    """``key=value`` of ``--set`` -> (key, parsed value). A dotted key sets one entry of a dict
    field and is returned as is: ``attention_options.reduction=8`` ->
    ``("attention_options.reduction", 8)`` (the value read as JSON, else as text)."""
    if "=" not in text:
        raise ValueError(f"--set expects key=value, got {text!r}")
    key, value = text.split("=", 1)
    key = key.strip().replace("-", "_")
    head, _, sub = key.partition(".")
    if head not in FIELDS:
        raise ValueError(f"--set: unknown key {head!r}; valid keys: {', '.join(FIELDS)}")
    if sub:
        if typing.get_origin(_base_type(head)[0]) is not dict:
            raise ValueError(f"--set {key}: {head} is not a dict field")
        try:
            return key, json.loads(value)
        except json.JSONDecodeError:
            return key, value
    return head, parse_value(head, value)


# -- command line -------------------------------------------------------------------------------
GROUP_TITLES = {"task": "task", "model": "model", "data": "data",
                "optimization": "optimization", "detection": "detection task",
                "sudoku": "sudoku task", "run": "execution"}


def add_config_arguments(parser: argparse.ArgumentParser,
                         exclude: tuple[str, ...] = ("recipe",)) -> None:
    """One flag per config field, in titled groups; every default is None ("not given"), so
    the recipe or config file supplies what the command line leaves out. ``recipe`` has its
    own flag (``--recipe``, which picks the base settings)."""
    groups = {key: parser.add_argument_group(f"{title} settings")
              for key, title in GROUP_TITLES.items()}
    for name, spec in FIELDS.items():
        if name in exclude:
            continue
        meta = spec.metadata
        kind, _ = _base_type(name)
        kwargs: dict[str, Any] = {"dest": name, "default": None}
        default = spec.default if spec.default is not dataclasses.MISSING else \
            spec.default_factory()  # type: ignore[misc]
        help_text = meta["help"] + (f" (default: {default})" if default not in (None, {}, [])
                                    else "")
        # Values are parsed after argparse (overrides_from_args), so that a bad value is one
        # line that names the flag and lists the valid choices.
        if kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(kind) is list:
            kwargs.update(nargs="+", metavar="{" + ",".join(meta["choices"]) + "}"
                          if meta["choices"] else "N")
        elif meta["choices"]:
            kwargs["metavar"] = "{" + ",".join(meta["choices"]) + "}"
        else:
            kwargs["metavar"] = name.split("_")[-1].upper()
        groups[meta["group"]].add_argument(flag(name), help=help_text.replace("%", "%%"),
                                           **kwargs)


def overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The config fields given on the command line, then the ``--set`` assignments (dotted keys
    kept as such; :func:`resolve_config` merges them into their dict field)."""
    given = {}
    for name in FIELDS:
        value = getattr(args, name, None)
        if value is None or isinstance(value, bool):
            given[name] = value
        elif isinstance(value, list):
            given[name] = parse_value(name, " ".join(value))
        else:
            given[name] = parse_value(name, value)
    given = {k: v for k, v in given.items() if v is not None}
    for text in getattr(args, "set", None) or []:
        key, value = parse_assignment(text)
        given[key] = value
    return given


# -- recipes ------------------------------------------------------------------------------------
# The paper's Table 6, the authors' CNN baselines (which decay every weight but what modules
# exempt), the embedded-data default and the Sudoku CPU default. Every field can be overridden.
RECIPES: dict[str, dict[str, Any]] = {
    # The authors' released baselines (their IEBN and SEM repositories) train the
    # post-activation ResNet-164; --model-options '{"preact": true}' gives the pre-activation one.
    "cifar-resnet164": dict(model="resnet164", model_options={"preact": False},
                            dataset="cifar10", epochs=164, batch_size=128,
                            lr=0.1, momentum=0.9, weight_decay=1e-4, schedule="multistep",
                            milestones=[81, 122], gamma=0.1, workers=4, val_split=5000,
                            weight_decay_exempt="requested"),
    "imagenet-resnet": dict(model="resnet50", dataset="imagefolder", epochs=120,
                            batch_size=256, lr=0.1, momentum=0.9, weight_decay=1e-4,
                            schedule="multistep", milestones=[30, 60, 90], gamma=0.1,
                            workers=8, eval_batch_size=256, weight_decay_exempt="requested"),
    "digits": dict(model="resnet20", dataset="digits", epochs=15, batch_size=64, lr=0.05,
                   schedule="cosine", weight_decay=5e-4, workers=0,
                   weight_decay_exempt="requested"),
    # The common from-scratch CIFAR ViT (omihub777/ViT-CIFAR: 200 epochs, batch 128, lr 1e-3,
    # 5 warm-up epochs, cosine to 1e-5, label smoothing 0.1, AutoAugment), with AdamW at DeiT's
    # weight decay 0.05 and gradient clipping at 1.0.
    "cifar-vit": dict(model="vit_cifar", dataset="cifar10", epochs=200, batch_size=128,
                      optimizer="adamw", lr=1e-3, betas=[0.9, 0.999], weight_decay=0.05,
                      weight_decay_exempt="timm", schedule="cosine", warmup_epochs=5.0,
                      min_lr=1e-5, label_smoothing=0.1, auto_augment="autoaugment",
                      clip_grad_norm=1.0, workers=4, eval_batch_size=512, val_split=5000),
    # MMDetection's 1x schedule for Faster R-CNN: SGD lr 0.02 for 16 images (scaled linearly
    # with the batch), 500-iteration linear warm-up, x0.1 at epochs 8 and 11, 12 epochs, images
    # resized to 800 (shorter side) / 1333.
    "coco-faster-rcnn": dict(task="detection", model="fasterrcnn_resnet50_fpn", dataset="coco",
                             epochs=12, batch_size=16, optimizer="sgd", lr=0.02,
                             lr_reference_batch=16, momentum=0.9, weight_decay=1e-4,
                             weight_decay_exempt="requested", schedule="multistep",
                             milestones=[8, 11], gamma=0.1, warmup_iters=500, min_size=800,
                             max_size=1333, workers=4, eval_batch_size=8),
    # The same schedule at CPU scale: ResNet-18-FPN, small images, 2 images a batch.
    "coco-cpu": dict(task="detection", model="fasterrcnn_resnet18_fpn", dataset="coco",
                     epochs=12, batch_size=2, optimizer="sgd", lr=0.02, lr_reference_batch=16,
                     momentum=0.9, weight_decay=1e-4, weight_decay_exempt="requested",
                     schedule="multistep", milestones=[8, 11], gamma=0.1, warmup_iters=100,
                     min_size=320, max_size=512, workers=0, eval_batch_size=4),
    "sudoku": dict(task="sudoku", model="sudoku", dataset="sudoku",
                   optimizer="adamw", lr=1e-3, weight_decay=0.0, schedule="constant",
                   epochs=10, batch_size=64, dim=128, heads=4, loops=16, train_puzzles=9000,
                   test_puzzles=1000),
    # The AKOrN code's ItrSA protocol (Adam(W) 5e-4, clip 1.0, EMA, loss on all 81 cells, 16
    # loops) at CPU width; warm-up and a cosine decay added.
    "sudoku-akorn": dict(task="sudoku", model="sudoku", dataset="sudoku", itrsa_preset="akorn",
                         optimizer="adamw", lr=5e-4, weight_decay=0.0, schedule="cosine",
                         warmup_epochs=1.0, clip_grad_norm=1.0, ema_decay=0.999,
                         loss_cells="all", epochs=30, batch_size=64, dim=128, heads=4,
                         loops=16, train_puzzles=9000, test_puzzles=1000,
                         eval_loops=[16, 32, 64]),
    # The CPU recipe that solves boards (2 cores, about half an hour; docs/dynamics.md): the
    # paper2 loop (norm after the sum, input injection) with LayerNorm at D = 64, small batches.
    "sudoku-cpu": dict(task="sudoku", model="sudoku", dataset="sudoku", itrsa_preset="paper2",
                       loop_norm="layernorm", optimizer="adamw", lr=1e-3, weight_decay=0.0,
                       schedule="cosine", warmup_epochs=1.0, clip_grad_norm=1.0,
                       ema_decay=0.999, loss_cells="all", epochs=40, batch_size=16, dim=64,
                       heads=4, loops=16, train_puzzles=9000, test_puzzles=1000,
                       val_puzzles=500, eval_loops=[16, 32, 64]),
    # Paper 2's scale (D = 512, 8 heads, T = 16) on SATNet's 9k/1k split, for GPU machines.
    "sudoku-paper": dict(task="sudoku", model="sudoku", dataset="satnet", optimizer="adamw",
                         lr=5e-4, weight_decay=0.0, schedule="cosine", warmup_epochs=2.0,
                         clip_grad_norm=1.0, ema_decay=0.999, loss_cells="all", epochs=100,
                         batch_size=100, dim=512, heads=8, loops=16, train_puzzles=9000,
                         test_puzzles=1000, eval_loops=[16, 32, 64, 128], workers=2),
}
DEFAULT_RECIPE = {"classification": "digits", "sudoku": "sudoku", "detection": "coco-cpu"}


def resolve_config(recipe: str | None, overrides: dict[str, Any],
                   base: dict[str, Any] | None = None) -> TrainConfig:
    """The recipe's values (or ``base``, a saved config), then every override that is not None.

    Without a recipe the task's default recipe is used. When ``epochs`` is overridden and
    ``milestones`` is not, the recipe's milestones scale with the epoch count (81/122 of 164
    stay at the same fractions of training).
    """
    given = {k: v for k, v in overrides.items() if v is not None}
    entries = {k: given.pop(k) for k in [k for k in given if "." in k]}
    unknown = sorted(set(given) - set(FIELDS))
    if unknown:
        raise ValueError(f"unknown setting{'s' if len(unknown) > 1 else ''} "
                         f"{', '.join(unknown)}; valid: {', '.join(FIELDS)}")
    if base is not None:
        values = _upgrade(base)   # a saved config of an older version, in today's form
    else:
        if recipe is None:
            task = given.get("task", "classification")
            if task not in DEFAULT_RECIPE:
                raise ValueError(f"unknown task {task!r}; valid: {', '.join(TASKS)}")
            recipe = DEFAULT_RECIPE[task]
        if recipe not in RECIPES:
            raise ValueError(f"unknown recipe {recipe!r}; valid: {', '.join(sorted(RECIPES))}")
        values = {**RECIPES[recipe], "recipe": recipe}
    if "epochs" in given and "milestones" not in given and values.get("milestones"):
        scale = given["epochs"] / values.get("epochs", FIELDS["epochs"].default)
        values["milestones"] = sorted({max(1, round(m * scale)) for m in values["milestones"]})
    values.update(given)
    for key, value in entries.items():
        head, sub = key.split(".", 1)
        values[head] = {**(values.get(head) or {}), sub: value}
    _upgrade_amp(values)   # also a boolean given here, as older callers did
    for name, value in list(values.items()):
        if name in FIELDS:
            values[name] = check_value(name, value, "config")
    config = TrainConfig.from_dict(values)
    config.validate()
    return config


def load_config_file(path: str | Path) -> dict[str, Any]:
    """The values of a saved ``config.json`` (a file or a run directory holding one); an
    unknown key is an error naming it."""
    path = Path(path)
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"no config file at {path}")
    try:
        values = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path} is not a JSON config: {error}") from None
    if not isinstance(values, dict):
        raise ValueError(f"{path} is not a JSON config object")
    TrainConfig.from_dict(values, strict=True, source=str(path))  # names unknown keys
    return {k: check_value(k, v, str(path)) for k, v in _upgrade(values).items()}

"""Trajectory capture: per input and per residual block, the scalars stiffness analysis needs.

One forward pass, hooks on the blocks, every statistic reduced inside the hook to float32
per-sample scalars (no ``.item()``, nothing of size C x H x W kept), hooks removed on exit.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from .metrics import EXCLUDED


@dataclass
class Trajectory:
    """Per-input, per-block statistics of a network's feature trajectory.

    nsi, state_norm, update_norm, step_mean: [inputs, blocks] float32 (NaN where undefined:
    NSI of shape-changing blocks); stage: [blocks] stage ids with EXCLUDED (-1) for
    shape-changing blocks; block_stage: [blocks] stage ids of every block; names: block names.
    """

    nsi: Tensor
    state_norm: Tensor
    update_norm: Tensor
    step_mean: Tensor
    stage: Tensor
    block_stage: Tensor
    names: list[str] = field(default_factory=list)

    @property
    def num_inputs(self) -> int:
        return self.nsi.shape[0]

    def to_dict(self) -> dict[str, object]:
        return {"names": self.names, "stage": self.stage.tolist(),
                "block_stage": self.block_stage.tolist(), "nsi": self.nsi.tolist(),
                "step_mean": self.step_mean.tolist()}


def _is_torchvision_block(module: nn.Module) -> bool:
    try:
        from torchvision.models.resnet import BasicBlock, Bottleneck
    except ImportError:  # pragma: no cover - torchvision is a dependency
        return False
    return isinstance(module, (BasicBlock, Bottleneck))


def find_blocks(model: nn.Module, blocks: Sequence[str] | None = None
                ) -> list[tuple[str, nn.Module, int | None]]:
    """(name, module, stage or None) of the residual blocks of ``model`` in forward order.

    * stepnet models: their ``residual_blocks()``, with their own stage ids;
    * torchvision ResNets: every BasicBlock / Bottleneck, stage = its ``layerK`` - 1;
    * any model: ``blocks`` names the block modules (``model.named_modules()`` names); blocks
      sharing a parent module form one stage.
    """
    named = dict(model.named_modules())
    if blocks is not None:
        missing = [b for b in blocks if b not in named]
        if missing:
            raise ValueError(f"no module named {missing[0]!r} in {type(model).__name__}; "
                             f"module names look like {list(named)[1:4]}")
        parents = [b.rsplit(".", 1)[0] if "." in b else "" for b in blocks]
        stage_of = {p: i for i, p in enumerate(dict.fromkeys(parents))}
        return [(b, named[b], stage_of[p]) for b, p in zip(blocks, parents)]
    if hasattr(model, "residual_blocks"):
        ours = {id(m): n for n, m in named.items()}
        return [(ours[id(b)], b, b.stage) for b in model.residual_blocks()]
    found = [(n, m) for n, m in named.items() if _is_torchvision_block(m)]
    if found:
        return [(n, m, int(n.split(".")[0].removeprefix("layer")) - 1
                 if n.startswith("layer") else None) for n, m in found]
    raise ValueError(
        f"no recognisable residual blocks in {type(model).__name__}: pass blocks=[...] naming "
        "the modules whose input x_t and output x_(t+1) form the trajectory"
    )


def _exact_euler_step(module: nn.Module) -> bool:
    """True when the block's output is exactly its Euler step x + fx * h with x the block input:
    a stepnet block without post-activation and without a projection shortcut."""
    from ..models.blocks import ResidualBlock

    return (isinstance(module, ResidualBlock) and not module.changes_shape
            and type(module).forward is ResidualBlock.forward)


def _update_norm(fx: Tensor, h: Tensor | None, divide_by_step: bool) -> Tensor:
    """||fx * h|| per sample (||fx|| when h is None or divided out), from per-channel norms of
    fx when h is a channel gate [B, C, 1, 1]: reads fx once and writes nothing full-size."""
    if h is None or divide_by_step:
        return torch.linalg.vector_norm(fx, dim=tuple(range(1, fx.dim())))
    if h.dim() == fx.dim() and h.shape[2:].numel() == 1:
        per_channel = torch.linalg.vector_norm(fx, dim=tuple(range(2, fx.dim())))  # [B, C]
        return torch.linalg.vector_norm(per_channel * h.flatten(1), dim=1)
    return torch.linalg.vector_norm(fx * h, dim=tuple(range(1, fx.dim())))


def _per_sample_mean(h: Tensor | None, batch: int, like: Tensor) -> Tensor:
    """Mean of h broadcast over a [B, ...] feature map, per sample; 1 when h is None."""
    if h is None:
        return torch.ones(batch, dtype=torch.float32, device=like.device)
    if h.dim() == 0:
        return h.float().expand(batch)
    # broadcasting replicates each entry of h equally often, so the mean over h's own entries
    # equals the mean over the broadcast map
    return h.float().reshape(h.shape[0], -1).mean(dim=1).expand(batch)


class TrajectoryRecorder:
    """Context manager recording the trajectory statistics of every forward pass.

    >>> with TrajectoryRecorder(model) as recorder:
    ...     model(images)
    >>> trajectory = recorder.trajectory()

    ``divide_by_step=True`` divides x_{t+1} - x_t by the block's step size h elementwise before
    taking the norm (NSI with Delta_t = h; needs stepnet blocks).
    """

    def __init__(self, model: nn.Module, blocks: Sequence[str] | None = None,
                 divide_by_step: bool = False) -> None:
        self.model = model
        self.blocks = find_blocks(model, blocks)
        self.divide_by_step = divide_by_step
        if divide_by_step and not all(hasattr(m, "step") for _, m, _ in self.blocks):
            raise ValueError("divide_by_step needs blocks with an Euler step module (stepnet)")
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._rows: list[dict[str, list[Tensor]]] = []
        self._changes_shape = [False] * len(self.blocks)
        self._pending_h: list[Tensor | None] = [None] * len(self.blocks)
        self._pending_fx: list[Tensor | None] = [None] * len(self.blocks)
        self._exact = [_exact_euler_step(m) for _, m, _ in self.blocks]

    def _block_hook(self, index: int):  # noqa: ANN202
        def hook(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
            x_t = inputs[0].detach()
            x_next = output.detach()
            batch = x_t.shape[0]
            dims = tuple(range(1, x_t.dim()))
            row = self._rows[index]
            h, fx = self._pending_h[index], self._pending_fx[index]
            self._pending_h[index] = self._pending_fx[index] = None
            row["state_norm"].append(torch.linalg.vector_norm(x_t, dim=dims).float())
            row["step_mean"].append(_per_sample_mean(h, batch, x_t))
            if x_t.shape != x_next.shape:
                self._changes_shape[index] = True
                nan = torch.full((batch,), float("nan"), device=x_t.device)
                row["update_norm"].append(nan)
                return
            if self._exact[index] and fx is not None:   # x_{t+1} - x_t = fx * h exactly
                row["update_norm"].append(_update_norm(fx, h, self.divide_by_step).float())
                return
            update = x_next - x_t
            if self.divide_by_step and h is not None:
                update = update / h
            row["update_norm"].append(torch.linalg.vector_norm(update, dim=dims).float())
        return hook

    def _step_hook(self, index: int):  # noqa: ANN202
        def hook(module: nn.Module, inputs: tuple, output: Tensor) -> None:
            h = inputs[2]
            self._pending_h[index] = None if h is None else h.detach()
            self._pending_fx[index] = inputs[1].detach()
        return hook

    def __enter__(self) -> TrajectoryRecorder:
        self._rows = [{"state_norm": [], "update_norm": [], "step_mean": []} for _ in self.blocks]
        for i, (_, module, _) in enumerate(self.blocks):
            if hasattr(module, "step"):
                self._handles.append(module.step.register_forward_hook(self._step_hook(i)))
            self._handles.append(module.register_forward_hook(self._block_hook(i)))
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def remove(self) -> None:
        """Remove every hook (also done on leaving the ``with`` block)."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def trajectory(self) -> Trajectory:
        """The statistics of every recorded input (rows in the order they were seen)."""
        if not self._rows or not self._rows[0]["state_norm"]:
            raise ValueError("nothing recorded: run the model inside the recorder first")
        columns = {key: torch.stack([torch.cat(row[key]).cpu() for row in self._rows], dim=1)
                   for key in ("state_norm", "update_norm", "step_mean")}
        block_stage = torch.tensor([s if s is not None else 0 for _, _, s in self.blocks])
        changes = torch.tensor([bool(getattr(m, "changes_shape", False)) or seen
                                for (_, m, _), seen in zip(self.blocks, self._changes_shape)])
        stage = torch.where(changes, torch.full_like(block_stage, EXCLUDED), block_stage)
        nsi = columns["update_norm"] / columns["state_norm"]
        nsi[:, changes] = float("nan")
        return Trajectory(nsi=nsi, state_norm=columns["state_norm"],
                          update_norm=columns["update_norm"], step_mean=columns["step_mean"],
                          stage=stage, block_stage=block_stage,
                          names=[name for name, _, _ in self.blocks])


def record_trajectories(model: nn.Module, batches: Iterable, max_inputs: int | None = None,
                        device: torch.device | str | None = None,
                        blocks: Sequence[str] | None = None, divide_by_step: bool = False,
                        progress: bool = True) -> Trajectory:
    """Stream ``batches`` (a DataLoader of (images, labels) or of images) through ``model`` in
    eval mode and return the trajectory statistics of up to ``max_inputs`` inputs.

    Memory beyond the model's own is the per-sample scalars only.
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    seen = 0
    total = max_inputs
    try:
        with TrajectoryRecorder(model, blocks, divide_by_step) as recorder, \
                torch.inference_mode():
            bar = tqdm(total=total, unit="img", desc="trajectories", disable=not progress)
            for batch in batches:
                images = batch[0] if isinstance(batch, (tuple, list)) else batch
                if max_inputs is not None:
                    images = images[:max_inputs - seen]
                model(images.to(device, non_blocking=True))
                seen += images.shape[0]
                bar.update(images.shape[0])
                if max_inputs is not None and seen >= max_inputs:
                    break
            bar.close()
        return recorder.trajectory()
    finally:
        model.train(was_training)

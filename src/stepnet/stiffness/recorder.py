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
    NSI of shape-changing blocks); ``nsi`` and ``update_norm`` take Delta_t = 1,
    ``nsi_step`` and ``update_norm_step`` Delta_t = h, the block's step size (equal to the
    former where a block has no step size); stage: [blocks] stage ids with EXCLUDED (-1) for
    the excluded blocks (see :data:`EXCLUSIONS`); block_stage: [blocks] stage ids of every
    block; names: block names.
    """

    nsi: Tensor
    state_norm: Tensor
    update_norm: Tensor
    step_mean: Tensor
    stage: Tensor
    block_stage: Tensor
    names: list[str] = field(default_factory=list)
    nsi_step: Tensor | None = None
    update_norm_step: Tensor | None = None
    exclude: str = "first"

    def __post_init__(self) -> None:
        if self.nsi_step is None:
            self.nsi_step = self.nsi
        if self.update_norm_step is None:
            self.update_norm_step = self.update_norm

    def nsi_for(self, step: str) -> Tensor:
        """The NSI with Delta_t = 1 (``step="1"``) or Delta_t = h (``step="h"``)."""
        if step not in STEP_CONVENTIONS:
            raise ValueError(f"unknown step convention {step!r}; valid: "
                             f"{', '.join(STEP_CONVENTIONS)}")
        return self.nsi if step == "1" else self.nsi_step

    @property
    def num_inputs(self) -> int:
        return self.nsi.shape[0]

    def to_dict(self) -> dict[str, object]:
        return {"names": self.names, "stage": self.stage.tolist(),
                "block_stage": self.block_stage.tolist(), "nsi": self.nsi.tolist(),
                "step_mean": self.step_mean.tolist(), "nsi_step": self.nsi_step.tolist(),
                "exclude": self.exclude}


# Which blocks take part in no statistic. "first": the first block of every stage, as the
# paper states ("we exclude the first block in each stage"), and any block whose shape changes
# wherever it sits; "shape": only the blocks whose shape changes (NSI undefined).
EXCLUSIONS = ("first", "shape")
# Delta_t of Def. 1: 1, or the block's step size h (the attention value, Sec. 2.4).
STEP_CONVENTIONS = ("1", "h")


def first_of_stage(block_stage: Sequence[int]) -> list[bool]:
    """True at the first block of every stage: block 0 and every block whose stage id differs
    from its predecessor's."""
    return [i == 0 or block_stage[i] != block_stage[i - 1] for i in range(len(block_stage))]


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
            and not module.step.relu and type(module).forward is ResidualBlock.forward)


def _channel_gate(t: Tensor, h: Tensor) -> Tensor | None:
    """h's entries as [B, C] when h is a gate with one entry per (sample, channel) of t
    ([B, C, 1, 1] on a feature map); None for other shapes of h."""
    if h.dim() == t.dim() and h.dim() >= 3 and h.shape[2:].numel() == 1 \
            and h.shape[:2] == t.shape[:2]:
        return h.flatten(1)
    return None


def _gate_group_norms(t: Tensor, h: Tensor) -> tuple[Tensor, Tensor] | None:
    """(per-group norms of t, the matching entries of h), both [B, G], when h is a channel gate
    [B, C, 1, 1] (groups: channels, norms over H x W) or a token gate [B, 1, D] (groups:
    features, norms over the tokens); None for other shapes of h."""
    gate = _channel_gate(t, h)
    if gate is not None:
        return torch.linalg.vector_norm(t, dim=tuple(range(2, t.dim()))), gate
    if h.dim() == 3 and t.dim() == 3 and h.shape[1] == 1 and h.shape[2] == t.shape[2]:
        return torch.linalg.vector_norm(t, dim=1), h[:, 0]
    return None


def _norms_from_groups(per_group: Tensor, gate: Tensor, scaled: bool) -> tuple[Tensor, Tensor]:
    """:func:`_update_norms` from the update's per-group norms and the gate's entries ([B, G])."""
    if scaled:
        return (torch.linalg.vector_norm(per_group * gate, dim=1),
                torch.linalg.vector_norm(per_group, dim=1))
    return (torch.linalg.vector_norm(per_group, dim=1),
            torch.linalg.vector_norm(per_group / gate, dim=1))


def _update_norms(update: Tensor, h: Tensor | None, scaled: bool) -> tuple[Tensor, Tensor]:
    """(||x_{t+1} - x_t||, ||(x_{t+1} - x_t) / h||) per sample, reading the full-size tensor
    once. ``scaled=True``: ``update`` is the branch output fx of an exact Euler step, so the
    update is fx * h; ``scaled=False``: ``update`` is x_{t+1} - x_t itself."""
    dims = tuple(range(1, update.dim()))
    if h is None:
        norm = torch.linalg.vector_norm(update, dim=dims)
        return norm, norm
    groups = _gate_group_norms(update, h)
    if groups is not None:
        return _norms_from_groups(*groups, scaled=scaled)
    if scaled:
        return (torch.linalg.vector_norm(update * h, dim=dims),
                torch.linalg.vector_norm(update, dim=dims))
    return (torch.linalg.vector_norm(update, dim=dims),
            torch.linalg.vector_norm(update / h, dim=dims))


def _per_sample_mean(h: Tensor | None, batch: int, like: Tensor) -> Tensor:
    """Mean of h broadcast over a [B, ...] feature map, per sample; 1 when h is None."""
    if h is None:
        return torch.ones(batch, dtype=torch.float32, device=like.device)
    if h.dim() == 0:
        return h.float().expand(batch)
    # broadcasting replicates each entry of h equally often, so the mean over h's own entries
    # equals the mean over the broadcast map
    return h.float().reshape(h.shape[0], -1).mean(dim=1).expand(batch)


ROW_KEYS = ("state_norm", "update_norm", "update_norm_step", "step_mean")


class TrajectoryRecorder:
    """Context manager recording the trajectory statistics of every forward pass.

    >>> with TrajectoryRecorder(model) as recorder:
    ...     model(images)
    >>> trajectory = recorder.trajectory()

    Both step conventions are recorded: ``trajectory.nsi`` with Delta_t = 1 and
    ``trajectory.nsi_step`` with Delta_t = h, x_{t+1} - x_t divided by the block's step size
    elementwise (blocks without a step size: h = 1). ``divide_by_step=True`` makes ``nsi`` the
    Delta_t = h one as well (older API). ``exclude`` picks the excluded blocks
    (:data:`EXCLUSIONS`; default: the first block of every stage, as the paper).
    """

    def __init__(self, model: nn.Module, blocks: Sequence[str] | None = None,
                 divide_by_step: bool = False, exclude: str = "first") -> None:
        if exclude not in EXCLUSIONS:
            raise ValueError(f"unknown exclusion {exclude!r}; valid: {', '.join(EXCLUSIONS)}")
        self.model = model
        self.blocks = find_blocks(model, blocks)
        self.divide_by_step = divide_by_step
        self.exclude = exclude
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._rows: list[dict[str, list[Tensor]]] = []
        self._changes_shape = [False] * len(self.blocks)
        # per block, from its step's hook: the step's (x, fx, h, x_next, sums [3, B, C] or None)
        self._pending_step: list[tuple | None] = [None] * len(self.blocks)
        # (x_next, its version, ||x_next|| per sample) of the last block whose step summed it:
        # the next block's state norm when that tensor is its input
        self._handed: tuple | None = None
        self._summing: list[nn.Module] = []
        self._exact = [_exact_euler_step(m) for _, m, _ in self.blocks]

    def _handed_state_norm(self, x_t: Tensor) -> Tensor | None:
        """||x_t|| per sample ([B] float32) handed on by the step that wrote ``x_t`` (the
        previous block's output, unchanged since), or None."""
        handed, self._handed = self._handed, None
        if handed is None or x_t is not handed[0]:
            return None
        if not x_t.is_inference() and x_t._version != handed[1]:
            return None   # changed in place since (inference tensors cannot be, outside it)
        return handed[2]

    def _block_hook(self, index: int):  # noqa: ANN202
        def hook(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
            x_t = inputs[0].detach()
            x_next = output.detach()
            batch = x_t.shape[0]
            dims = tuple(range(1, x_t.dim()))
            row = self._rows[index]
            step_x = fx = h = step_out = sums = None
            if self._pending_step[index] is not None:
                step_x, fx, h, step_out, sums = self._pending_step[index]
                self._pending_step[index] = None
            state_norm = self._handed_state_norm(inputs[0])
            # a step that offers ``record_sums`` (a fused one: stepnet.fast.step) leaves the
            # sums of squares of its output, its update and its update / h per (sample,
            # channel), [3, B, C], from its one pass: they describe this block when the step
            # wrote the block's output, its update too when the step's x is the block's input
            norms = None
            if sums is not None and output is step_out:
                out_norm, update_norm, update_norm_step = sums.sum(dim=2).sqrt_().float()
                self._handed = (output, None if output.is_inference() else output._version,
                                out_norm)
                if inputs[0] is step_x:
                    norms = update_norm, update_norm_step
            exact = self._exact[index] and fx is not None   # x_{t+1} - x_t = fx * h exactly
            if state_norm is None:
                state_norm = torch.linalg.vector_norm(x_t, dim=dims).float()
            row["state_norm"].append(state_norm)
            row["step_mean"].append(_per_sample_mean(h, batch, x_t))
            if x_t.shape != x_next.shape:
                self._changes_shape[index] = True
                nan = torch.full((batch,), float("nan"), device=x_t.device)
                row["update_norm"].append(nan)
                row["update_norm_step"].append(nan)
                return
            if norms is not None:
                plain, by_step = norms
            elif exact:
                plain, by_step = _update_norms(fx, h, scaled=True)
            else:
                plain, by_step = _update_norms(x_next - x_t, h, scaled=False)
            row["update_norm"].append(plain.float())
            row["update_norm_step"].append(by_step.float())
        return hook

    def _step_hook(self, index: int):  # noqa: ANN202
        def hook(module: nn.Module, inputs: tuple, output: Tensor) -> None:
            x, fx, h = inputs
            sums = getattr(module, "sums", None)
            if sums is not None:
                module.sums = None   # read once
            self._pending_step[index] = (x, fx.detach(), None if h is None else h.detach(),
                                         output, sums)
        return hook

    def __enter__(self) -> TrajectoryRecorder:
        self._rows = [{key: [] for key in ROW_KEYS} for _ in self.blocks]
        self._handed = None
        for i, (_, module, _) in enumerate(self.blocks):
            if hasattr(module, "step"):
                self._handles.append(module.step.register_forward_hook(self._step_hook(i)))
                if hasattr(module.step, "record_sums"):
                    module.step.record_sums = True
                    self._summing.append(module.step)
            self._handles.append(module.register_forward_hook(self._block_hook(i)))
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def remove(self) -> None:
        """Remove every hook (also done on leaving the ``with`` block)."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        for step in self._summing:
            step.record_sums = False
            step.sums = None
        self._summing.clear()
        self._handed = None

    def trajectory(self) -> Trajectory:
        """The statistics of every recorded input (rows in the order they were seen)."""
        if not self._rows or not self._rows[0]["state_norm"]:
            raise ValueError("nothing recorded: run the model inside the recorder first")
        columns = {key: torch.stack([torch.cat(row[key]).cpu() for row in self._rows], dim=1)
                   for key in ROW_KEYS}
        block_stage = torch.tensor([s if s is not None else 0 for _, _, s in self.blocks])
        changes = torch.tensor([bool(getattr(m, "changes_shape", False)) or seen
                                for (_, m, _), seen in zip(self.blocks, self._changes_shape)])
        excluded = changes
        if self.exclude == "first":
            excluded = changes | torch.tensor(first_of_stage(block_stage.tolist()))
        stage = torch.where(excluded, torch.full_like(block_stage, EXCLUDED), block_stage)
        nsi = columns["update_norm"] / columns["state_norm"]
        nsi_step = columns["update_norm_step"] / columns["state_norm"]
        nsi[:, changes] = float("nan")
        nsi_step[:, changes] = float("nan")
        if self.divide_by_step:
            nsi, columns["update_norm"] = nsi_step, columns["update_norm_step"]
        return Trajectory(nsi=nsi, state_norm=columns["state_norm"],
                          update_norm=columns["update_norm"], step_mean=columns["step_mean"],
                          stage=stage, block_stage=block_stage,
                          names=[name for name, _, _ in self.blocks], nsi_step=nsi_step,
                          update_norm_step=columns["update_norm_step"], exclude=self.exclude)


def record_trajectories(model: nn.Module, batches: Iterable, max_inputs: int | None = None,
                        device: torch.device | str | None = None,
                        blocks: Sequence[str] | None = None, divide_by_step: bool = False,
                        progress: bool = True, exclude: str = "first") -> Trajectory:
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
        with TrajectoryRecorder(model, blocks, divide_by_step, exclude) as recorder, \
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

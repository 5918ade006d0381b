"""Compiled CPU kernels, built on first use with the system's C compiler.

Each makes one pass over full-size tensors where ATen needs several (``kernels.c``):

* :func:`gate_backward` -- the backward of the gated Euler step ``x + fx * h`` for a channel
  gate, one pass over ``grad`` and ``fx`` instead of three (``grad * fx``, its sum,
  ``grad * h``); equal to ATen's to float rounding (``grad_fx`` bitwise, ``grad_h`` summed in
  another order);
* :func:`gate_relu_backward` -- the same for the post-activation step ``relu(x + fx * h)``,
  the ReLU's backward included: one pass over ``grad``, the output and ``fx`` (and, given the
  gradient of the output's pooling, that pooling's backward in the same pass);
* :func:`euler_step` -- the Euler step ``x + fx * h`` outside autograd (evaluation, and the
  forward of the post-activation step in training), with the post-activation ReLU and, when
  asked, the recorder's sums of squares and the output's global average pooling in the same
  pass (ATen needs two passes for the step and the ReLU, the recorder two more to read the
  states again, the pooling one); bitwise equal to ATen's ``addcmul`` (one rounding or two, as
  ATen rounds on this CPU) and ``relu``;
* :func:`row_moments`, :func:`affine_relu_step`, :func:`affine_relu_step_backward` and
  :func:`affine_grad_z` -- the post-activation step with its batch norm folded in,
  ``relu(x + a z + b)`` from the batch norm's input ``z`` (the moments of ``z`` in one pass,
  the step and ReLU in one, its backward in two, where ATen needs seven and five;
  :mod:`stepnet.fast.folds`);
* :func:`adaptor_forward` / :func:`adaptor_backward` -- StepNet's default adaptor in training
  mode on its pooled [B, C] descriptors (the two-state difference, IEBN with batch statistics
  and its running-statistics update, the sigmoids) in one call each way, where ATen runs about
  twenty small ops and as many autograd nodes.

x86-64 CPUs with AVX2 and FMA run a vectorised build of every kernel, others a baseline one.
Each kernel is a ``torch.library`` custom operator, ``torch.ops.stepnet.<name>``
(:mod:`~stepnet.fast.kernels.ops`: fake functions for ``torch.compile`` and ``torch.export``,
autograd for the four forward ones), defined in ``ops.cpp``, which checks its tensors and shares
the rows out over torch's threads (``at::parallel_for``). They are built the first time a CPU
step needs them (Linux; about 15 s): ``kernels.c`` with ``$CC`` or ``cc`` into an object, and
``ops.cpp`` through ``torch.utils.cpp_extension`` (ninja, the C++ compiler) into
``$STEPNET_CACHE_DIR/kernels`` (default ``~/.cache/stepnet/kernels``), in a folder whose name
hashes the sources, the compiler, the flags and torch's version; later processes load the cached
library. Where they cannot be built or loaded, one warning says why and the ATen ops are used.
``STEPNET_KERNELS=0`` in the environment, or :func:`aten_only`, turns the kernels off.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
import shlex
import shutil
import subprocess
import sys
import warnings
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor

from ...torch_internals import is_functorch_wrapped
from . import ops

__all__ = ["AdaptorSaved", "EulerStepResult", "adaptor_applies", "adaptor_backward",
           "adaptor_forward", "adaptor_forward_unchecked", "affine_grad_z", "affine_relu_step",
           "affine_relu_step_backward", "affine_step_applies", "aten_only", "cache_dir",
           "euler_step", "euler_step_applies", "gate_backward", "gate_relu_backward",
           "kernels_available", "row_moments"]

SOURCE = "kernels.c"
OPS_SOURCE = "ops.cpp"
# the C kernels' object: `omp simd` vectorises (-fopenmp-simd); threads come from ops.cpp
FLAGS = ("-O3", "-fno-trapping-math", "-fopenmp-simd", "-fPIC", "-std=c11")
OPS_FLAGS = ("-O3",)


def _openmp_flags() -> tuple[str, ...]:
    """at::parallel_for is a header template: compiled without OpenMP it runs serially where
    torch's CPU backend is OpenMP (torch's extension docs ask for -fopenmp then); the
    extension's libgomp is then torch's, already loaded under the same soname."""
    return ("-fopenmp",) if "ATen parallel backend: OpenMP" in torch.__config__.parallel_info() \
        else ()
_DTYPES = {torch.float32: 0, torch.float64: 1}

_enabled = os.environ.get("STEPNET_KERNELS", "1") != "0"
_loaded = False
_load_failed = False


def cache_dir() -> Path:
    """Where built kernels are kept: ``$STEPNET_CACHE_DIR/kernels``, else
    ``$XDG_CACHE_HOME/stepnet/kernels``, else ``~/.cache/stepnet/kernels``."""
    root = os.environ.get("STEPNET_CACHE_DIR")
    if root:
        return Path(root) / "kernels"
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "stepnet" / "kernels"


@contextlib.contextmanager
def aten_only() -> Iterator[None]:
    """Within this context no compiled kernel is used: the ATen reference path
    (``benchmarks/overhead.py`` variants ``name/aten``)."""
    global _enabled
    previous, _enabled = _enabled, False
    try:
        yield
    finally:
        _enabled = previous


def _compiler() -> list[str] | None:
    cc = os.environ.get("CC")
    if cc:
        return shlex.split(cc)
    found = shutil.which("cc") or shutil.which("gcc")
    return [found] if found else None


def _operators_registered() -> bool:
    """Whether this process has the ``stepnet::*`` operators already (a library registers a
    namespace once per process)."""
    return hasattr(torch.ops.stepnet, ops.OPERATORS[0])


def _write_atomically(target: Path, data: bytes) -> None:
    partial = target.with_name(f".{target.name}.{os.getpid()}")
    try:
        partial.write_bytes(data)
        os.replace(partial, target)   # concurrent builders (torchrun ranks) agree
    finally:
        partial.unlink(missing_ok=True)


def _compile_kernels(compiler: list[str], source: bytes, target: Path) -> None:
    """kernels.c into the object ``target`` (atomically)."""
    source_file = target.with_name(f".kernels.{os.getpid()}.c")
    partial = target.with_name(f".{target.name}.{os.getpid()}")
    try:
        source_file.write_bytes(source)
        done = subprocess.run([*compiler, *FLAGS, "-c", "-o", str(partial), str(source_file)],
                              capture_output=True, text=True, timeout=300)
        if done.returncode != 0:
            raise RuntimeError(f"{shlex.join(compiler)} failed: {done.stderr.strip()[-600:]}")
        os.replace(partial, target)
    finally:
        source_file.unlink(missing_ok=True)
        partial.unlink(missing_ok=True)


def _ninja_on_path() -> None:
    """torch.utils.cpp_extension builds with ninja: the `ninja` package's binary where the
    system has none on PATH (a virtual environment not activated)."""
    if shutil.which("ninja"):
        return
    try:
        import ninja
    except ImportError as error:
        raise RuntimeError("ninja is needed to build the operators (pip install ninja)") \
            from error
    os.environ["PATH"] = os.pathsep.join([ninja.BIN_DIR, os.environ.get("PATH", "")])


def _build_and_load() -> None:
    """Compile kernels.c (with the C compiler) and ops.cpp (through torch.utils.cpp_extension,
    linking the kernels' object), once per source, compiler, flags and torch version, and load
    the operators; raises ``RuntimeError`` saying why it cannot."""
    if not sys.platform.startswith("linux"):
        raise RuntimeError(f"compiled kernels are built on Linux only (this is {sys.platform})")
    compiler = _compiler()
    if compiler is None:
        raise RuntimeError("no C compiler found (set CC, or install gcc)")
    here = resources.files(__name__)
    source, ops_source = here.joinpath(SOURCE).read_bytes(), here.joinpath(OPS_SOURCE).read_bytes()
    build = (compiler, FLAGS, OPS_FLAGS, _openmp_flags(), torch.__version__)
    key = hashlib.sha256(source + ops_source + repr(build).encode()).hexdigest()[:16]
    directory = cache_dir() / f"ops-{key}"
    directory.mkdir(parents=True, exist_ok=True)
    kernel_object = directory / "kernels.o"
    if not kernel_object.exists():
        _compile_kernels(compiler, source, kernel_object)
    ops_file = directory / OPS_SOURCE
    if not ops_file.exists():
        _write_atomically(ops_file, ops_source)
    _ninja_on_path()
    # the extension builder's start-up notices (a CPU build looking for CUDA) are not ours
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    from torch.utils import cpp_extension

    try:
        cpp_extension.load(name=f"stepnet_kernels_{key}", sources=[str(ops_file)],
                           extra_cflags=[*OPS_FLAGS, *_openmp_flags()],
                           extra_ldflags=[str(kernel_object), *_openmp_flags()],
                           build_directory=str(directory), with_cuda=False,
                           is_python_module=False, verbose=False)
    except (subprocess.CalledProcessError, OSError) as error:
        raise RuntimeError(f"building the operators failed: {error}") from error


def _load() -> bool:
    """Whether the operators are loaded (building them on first use); one warning when they
    cannot be."""
    global _loaded, _load_failed
    if not _loaded and not _load_failed:
        try:
            if not _operators_registered():
                _build_and_load()
            ops.register()
            _loaded = True
        except (RuntimeError, OSError, ImportError, subprocess.SubprocessError) as error:
            _load_failed = True
            warnings.warn(f"stepnet: compiled CPU kernels unavailable ({error}); using ATen ops "
                          f"(same results, slower). STEPNET_KERNELS=0 silences this.",
                          RuntimeWarning, stacklevel=3)
    return _loaded


def kernels_available() -> bool:
    """True when the kernels are on and built (builds them if needed)."""
    return _enabled and _load()


_PLAIN_TYPES = (Tensor, torch.nn.Parameter)


def _plain_cpu(t: Tensor) -> bool:
    """An ordinary eager CPU tensor or parameter whose memory can be handed to C (no other
    tensor subclass, no functorch wrapper such as vmap's batched tensors, no fake tensor of a
    compiler)."""
    return (type(t) in _PLAIN_TYPES and t.is_cpu and t.is_contiguous()
            and not is_functorch_wrapped(t))


def _active() -> bool:
    return _enabled and not torch.compiler.is_compiling()


def _channel_gate_rows(h: Tensor, like: Tensor) -> int | None:
    """The number of gate values of a channel gate ``h`` [B|1, C, 1, ...] for ``like``
    [B, C, *S] (B * C or C), or None when ``h`` is not one."""
    if (h.dim() != like.dim() or h.shape[1] != like.shape[1]
            or h.shape[0] not in (1, like.shape[0]) or any(s != 1 for s in h.shape[2:])):
        return None
    return h.numel()


def _applies(full: tuple[Tensor, ...], gate: Tensor | None = None,
             outside_autograd: bool = True) -> int | None:
    """The dtype code when a kernel applies to the ``full`` tensors (one shape [B, C, *S] with
    at least 3 dimensions, not empty, contiguous CPU float32/float64 of one dtype) and the
    channel ``gate`` [B|1, C, 1, ...] of that dtype (when given), with the kernels on and built,
    outside tracing and compiling, and (``outside_autograd``) outside autograd recording;
    else None."""
    if not _active() or (outside_autograd and torch.is_grad_enabled()):
        return None
    first = full[0]
    if first.dim() < 3 or first.numel() == 0 or any(t.shape != first.shape for t in full):
        return None
    tensors = full if gate is None else (*full, gate)
    dtype = _DTYPES.get(first.dtype)
    if dtype is None or any(t.dtype != first.dtype for t in tensors):
        return None
    if gate is not None and _channel_gate_rows(gate, first) is None:
        return None
    if not all(_plain_cpu(t) for t in tensors):
        return None
    return dtype if _load() else None


def _rows_to_gate(row_sum: Tensor, grad: Tensor, h: Tensor) -> Tensor:
    """grad_h from the per-(sample, channel) sums [B, C]: summed over the batch for a shared
    gate [1, C, 1, ...]."""
    return row_sum.view(grad.shape[:2] + (1,) * (grad.dim() - 2)).sum_to_size(h.shape)


def _per_position(pool_grad: Tensor, grad: Tensor) -> Tensor | None:
    """The gradient ``pool_grad`` [B, C] of a per-(sample, channel) mean of a tensor like
    ``grad``, divided by the positions averaged (as the pooling's own backward divides), for a
    kernel; None where it cannot be handed to C."""
    scaled = (pool_grad / (grad.numel() // (grad.shape[0] * grad.shape[1]))).contiguous()
    if scaled.shape != grad.shape[:2] or scaled.dtype != grad.dtype or not _plain_cpu(scaled):
        return None
    return scaled


def gate_backward(grad: Tensor, fx: Tensor, h: Tensor) -> tuple[Tensor, Tensor] | None:
    """``(grad * h, (grad * fx).sum_to_size(h.shape))`` in one pass, or None where the kernel
    does not apply (then the caller computes them with ATen ops).

    Applies to contiguous float32/float64 CPU tensors ``grad``, ``fx`` [B, C, *S] and a channel
    gate ``h`` [B|1, C, 1, ...], outside autograd recording (not for double backward) and
    outside tracing and compiling.
    """
    dtype = _applies((grad, fx), h)
    if dtype is None:
        return None
    grad_fx, row_sum = torch.ops.stepnet.gate_backward(grad, fx, h)
    return grad_fx, _rows_to_gate(row_sum, grad, h)


def gate_relu_backward(grad: Tensor, y: Tensor, fx: Tensor, h: Tensor,
                       pool_grad: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor] | None:
    """The backward of ``y = relu(x + fx * h)`` from its output ``y``: ``(grad_x, grad_x * h,
    (grad_x * fx).sum_to_size(h.shape))`` with ``grad_x = threshold_backward(grad, y, 0)``
    (zero where y <= 0), in one pass; or None where the kernel does not apply (as
    :func:`gate_backward`).

    ``pool_grad`` [B, C] is the gradient of ``y``'s global average pooling (``y`` pooled over
    every dimension after the second), when that pooling was taken from the step
    (:func:`euler_step` with ``pool=True``): ``grad_x`` then masks ``grad + pool_grad / S``
    broadcast over the pooled positions (S of them), the pooling's backward in the same pass.
    """
    dtype = _applies((grad, y, fx), h)
    if dtype is None:
        return None
    if pool_grad is not None:
        pool_grad = _per_position(pool_grad, grad)
        if pool_grad is None:
            return None
    grad_x, grad_fx, row_sum = torch.ops.stepnet.gate_relu_backward(grad, y, fx, h, pool_grad)
    return grad_x, grad_fx, _rows_to_gate(row_sum, grad, h)


@functools.cache
def _addcmul_fuses(dtype: torch.dtype) -> bool:
    """Whether ATen's CPU ``addcmul`` rounds ``x + fx * h`` once (a fused multiply-add, as its
    AVX2 / AVX-512 / NEON kernels do) or twice (its baseline kernel): a probe whose product
    (1 + 2^-12)^2 = 1 + 2^-11 + 2^-24 loses its last term when rounded on its own."""
    x = torch.full((4, 64), -1.0, dtype=dtype)
    fx = torch.full((4, 64), 1 + 2.0 ** -12, dtype=dtype)
    h = torch.full((4, 1), 1 + 2.0 ** -12, dtype=dtype)
    if dtype == torch.float64:
        fx.fill_(1 + 2.0 ** -27)
        h.fill_(1 + 2.0 ** -27)
    with torch.no_grad():
        return bool((torch.addcmul(x, fx, h) != (x + fx * h)).all())


def euler_step_applies(x: Tensor, fx: Tensor, h: Tensor | None) -> bool:
    """Whether :func:`euler_step` applies to these tensors once autograd stops recording (in
    an autograd function's forward): lets a caller pick such a function beforehand."""
    return _applies((x, fx), h, outside_autograd=False) is not None


class EulerStepResult(NamedTuple):
    """What :func:`euler_step` returns: the new state, and what was asked for besides."""

    out: Tensor                 # [B, C, *S]
    sums: Tensor | None         # [3, B, C] float64, with sums=True
    pooled: Tensor | None       # [B, C], with pool=True


def euler_step(x: Tensor, fx: Tensor, h: Tensor | None, relu: bool = False,
               sums: bool = False, pool: bool = False) -> EulerStepResult | None:
    """``x + fx * h`` (``relu``: then the ReLU) in one pass, with, when ``sums``, the sums of
    squares per (sample, channel) the stiffness recorder needs and, when ``pool``, the output's
    global average pooling; or None where the kernel does not apply (then the caller uses ATen
    ops).

    Returns ``(out, sums, pooled)``: ``out`` [B, C, *S] bitwise equal to
    ``torch.addcmul(x, fx, h)`` (``x + fx`` when h is None), then ``torch.relu``; ``sums``
    (when asked for, else None) [3, B, C] float64 over every dimension after the second:
    Σ out², Σ u², Σ (u / h)² for the update u = out - x (taken as fx * h without the ReLU,
    where it is exactly that); ``pooled`` (when asked for, else None) [B, C] in ``out``'s
    dtype, the mean of ``out`` over every dimension after the second (summed in float64, so
    equal to ATen's mean to float rounding). Applies outside autograd recording (``no_grad``,
    ``inference_mode``, an autograd function's forward) to contiguous float32/float64 CPU
    tensors ``x`` and ``fx`` of one shape [B, C, *S] and a channel gate ``h`` [B|1, C, 1, ...]
    or None, outside tracing and compiling.
    """
    dtype = _applies((x, fx), h)
    if dtype is None:
        return None
    out, planes, pooled = torch.ops.stepnet.euler_step(x, fx, h, relu, sums, pool,
                                                       _addcmul_fuses(x.dtype))
    return EulerStepResult(out, planes if sums else None, pooled if pool else None)


# --- the post-activation step with its batch norm folded in ----------------------------------

def affine_step_applies(x: Tensor, z: Tensor) -> bool:
    """Whether the folded-norm kernels (:func:`row_moments`, :func:`affine_relu_step`, ...)
    apply to a step's ``x`` and the batch norm's input ``z``: contiguous plain CPU
    float32/float64 tensors of one shape [B, C, *S], with the kernels on and built, outside
    tracing and compiling (autograd may be recording: the caller's autograd functions call
    them)."""
    return _applies((x, z), outside_autograd=False) is not None


def _row_gate(a: Tensor, like: Tensor) -> bool:
    """``a`` holds one value per (sample, channel) of ``like`` [B, C, ...] ([B, C]) or per
    channel ([1, C]), contiguous, of like's dtype."""
    return (a.dim() == 2 and a.shape[1] == like.shape[1] and a.shape[0] in (1, like.shape[0])
            and a.dtype == like.dtype and _plain_cpu(a))


def row_moments(z: Tensor, filters: Tensor | None = None
                ) -> tuple[Tensor, Tensor, Tensor | None] | None:
    """``(z.sum(dims), (z ** 2).sum(dims), (z * filters).sum(dims))`` over every dimension
    after the second, [B, C] float64 each (accumulated in float64), in one pass; the last None
    without ``filters`` ([C, *S], z's dtype, contiguous: per-channel weights over the
    positions). None where the kernel does not apply. Not differentiable by itself (an
    autograd function's forward)."""
    dtype = _applies((z,), outside_autograd=False)
    if dtype is None or (filters is not None and (
            filters.shape != z.shape[1:] or filters.dtype != z.dtype or not _plain_cpu(filters))):
        return None
    total, squares, filtered = torch.ops.stepnet.row_moments(z, filters)
    return total, squares, None if filters is None else filtered


def affine_relu_step(x: Tensor | None, z: Tensor, a: Tensor, b: Tensor, pool: bool = False
                     ) -> tuple[Tensor, Tensor | None] | None:
    """``(y, pooled)`` with ``y = relu(x + (a * z + b))`` (``relu(a * z + b)`` when ``x`` is
    None) for ``a``, ``b`` [B|1, C] broadcast over the positions of ``x``, ``z`` [B, C, *S],
    and (``pool``) y's global average pooling [B, C] (summed in float64), in one pass; None
    where the kernel does not apply. The product and its shift are one fused multiply-add where
    ATen's ``addcmul`` fuses on this CPU."""
    dtype = _applies((z,) if x is None else (x, z), outside_autograd=False)
    if dtype is None or not (_row_gate(a, z) and b.shape == a.shape and _row_gate(b, z)):
        return None
    out, pooled = torch.ops.stepnet.affine_relu_step(x, z, a, b, pool, _addcmul_fuses(z.dtype))
    return out, pooled if pool else None


def affine_relu_step_backward(grad: Tensor, y: Tensor, z: Tensor, pool_grad: Tensor | None
                              ) -> tuple[Tensor, Tensor, Tensor] | None:
    """The first half of :func:`affine_relu_step`'s backward: ``(grad_x, sum_g, sum_gz)`` with
    ``grad_x = threshold_backward(grad + pool_grad / S, y, 0)`` (the pooling's broadcast
    gradient, when given, [B, C]; S positions) and its sums per (sample, channel), plain and
    times ``z`` ([B, C] each: the gradients of b and a), in one pass; None where the kernel
    does not apply or autograd is recording (double backward)."""
    dtype = _applies((grad, y, z))
    if dtype is None:
        return None
    if pool_grad is not None:
        pool_grad = _per_position(pool_grad, grad)
        if pool_grad is None:
            return None
    grad_x, sum_g, sum_gz = torch.ops.stepnet.affine_relu_step_backward(grad, y, z, pool_grad)
    return grad_x, sum_g, sum_gz


def affine_grad_z(z: Tensor, grad_x: Tensor | None, a: Tensor | None, u: Tensor, v: Tensor,
                  shift: Tensor) -> Tensor | None:
    """z's whole gradient in one pass: ``a * grad_x + v * (z - shift) + u`` with ``a`` [B|1, C]
    and ``grad_x`` [B, C, *S] (the step's part; both None for none), ``u``, ``v`` [B, C] and
    ``shift`` [C] float64 (the moments' part: ``v`` twice the gradient of the sum of squares,
    ``u`` the sum's plus ``v * shift``); None where the kernel does not apply or autograd is
    recording."""
    dtype = _applies((z,) if grad_x is None else (z, grad_x))
    channels = z.shape[1] if z.dim() >= 2 else 0
    if (dtype is None or (grad_x is not None and not _row_gate(a, z))
            or any(t.dtype != torch.float64 or not _plain_cpu(t) for t in (u, v, shift))
            or u.shape != z.shape[:2] or v.shape != u.shape or shift.shape != (channels,)):
        return None
    grad_z = torch.ops.stepnet.affine_grad_z(z, grad_x, None if grad_x is None else a, u, v,
                                             shift)
    return grad_z


# --- StepNet's adaptor on pooled descriptors ------------------------------------------------

class AdaptorSaved(NamedTuple):
    """What :func:`adaptor_forward` keeps for :func:`adaptor_backward` ([B, C] each, invstd
    [C])."""

    z: Tensor
    zhat: Tensor
    gate: Tensor
    invstd: Tensor


def adaptor_applies(p: Tensor, d: Tensor, weight: Tensor, per_channel: tuple[Tensor, ...]
                    ) -> bool:
    """Whether :func:`adaptor_forward` applies: descriptors ``p``, ``d`` [B, C] (B >= 2), the
    difference's ``weight`` (2C values) and ``per_channel`` tensors (C values each), all
    contiguous plain CPU tensors (or parameters) of one float dtype, with the kernels on and
    built, outside compiling. Lets a caller pick an autograd function beforehand."""
    if not _active() or p.dim() != 2 or p.shape[0] < 2 or d.shape != p.shape:
        return False
    channels, dtype = p.shape[1], p.dtype
    if dtype not in _DTYPES or weight.numel() != 2 * channels:
        return False
    for t in (p, d, weight, *per_channel):
        if t.dtype != dtype or not _plain_cpu(t):
            return False
    if any(t.numel() != channels for t in per_channel):
        return False
    return _load()


def adaptor_forward(p: Tensor, d: Tensor, weight: Tensor, gamma: Tensor, beta: Tensor,
                    ie_weight: Tensor, ie_bias: Tensor, running_mean: Tensor | None,
                    running_var: Tensor | None, eps: float, momentum: float
                    ) -> tuple[Tensor, AdaptorSaved] | None:
    """StepNet's default adaptor in training mode (``kernels.c`` gives the formulas): the step
    size h [B, C] from the pooled states p = GAP(x) and d = GAP(fx) ([B, C], B >= 2) through
    the two-state difference (``weight`` [C, 2, 1, 1]), IEBN with batch statistics (``gamma``,
    ``beta``, ``ie_weight``, ``ie_bias`` [C]) and the sigmoid, in one call; the running
    statistics (when given) updated in place with ``momentum``. Returns ``(h, saved)`` for
    :func:`adaptor_backward`, or None where the kernel does not apply (then the caller uses
    ATen ops). Not differentiable by itself: an autograd function's forward."""
    stats = () if running_mean is None else (running_mean, running_var)
    if not adaptor_applies(p, d, weight, (gamma, beta, ie_weight, ie_bias, *stats)):
        return None
    return adaptor_forward_unchecked(p, d, weight, gamma, beta, ie_weight, ie_bias,
                                     running_mean, running_var, eps, momentum)


def adaptor_forward_unchecked(p: Tensor, d: Tensor, weight: Tensor, gamma: Tensor,
                              beta: Tensor, ie_weight: Tensor, ie_bias: Tensor,
                              running_mean: Tensor | None, running_var: Tensor | None,
                              eps: float, momentum: float) -> tuple[Tensor, AdaptorSaved]:
    """:func:`adaptor_forward` for arguments :func:`adaptor_applies` accepted (unchecked: the
    per-block checks are a tenth of the call)."""
    h, z, zhat, gate, invstd, new_mean, new_var = torch.ops.stepnet.adaptor_forward(
        p, d, weight, gamma, beta, ie_weight, ie_bias, running_mean, running_var, eps, momentum)
    if running_mean is not None:
        running_mean.copy_(new_mean)
        running_var.copy_(new_var)
    return h, AdaptorSaved(z, zhat, gate, invstd)


def adaptor_backward(grad_h: Tensor, p: Tensor, d: Tensor, weight: Tensor, gamma: Tensor,
                     ie_weight: Tensor, h: Tensor, saved: AdaptorSaved
                     ) -> tuple[Tensor, ...] | None:
    """The gradients ``(p, d, weight, gamma, beta, ie_weight, ie_bias)`` of
    :func:`adaptor_forward`'s h for the incoming ``grad_h`` [B, C] (batch norm's backward
    through the batch statistics included); the other arguments as given to and returned by
    that call. None where the kernel does not apply: ``grad_h`` not a contiguous plain CPU
    tensor like h, or autograd recording (double backward)."""
    if (torch.is_grad_enabled() or not _active() or grad_h.shape != h.shape
            or grad_h.dtype != h.dtype or not _plain_cpu(grad_h)):
        return None
    return torch.ops.stepnet.adaptor_backward(grad_h, p, d, weight, gamma, ie_weight, h,
                                              saved.z, saved.zhat, saved.gate, saved.invstd)


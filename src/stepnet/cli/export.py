"""``stepnet export``: a checkpoint as an ONNX model, a TorchScript module or a
``torch.export`` ExportedProgram, checked numerically against the PyTorch model."""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

FORMATS = {"onnx": ".onnx", "torchscript": ".ts.pt", "exported-program": ".pt2"}


def example_input(checkpoint: dict[str, Any], batch: int) -> Any:
    """An input of the checkpoint's model: images [batch, C, S, S] or Sudoku boards
    [batch, 81]."""
    import torch

    from ..engine.tasks import task_of_checkpoint

    kwargs = checkpoint["model"].get("kwargs", {})
    if task_of_checkpoint(checkpoint) == "sudoku":
        return torch.randint(0, 10, (batch, 81), generator=torch.Generator().manual_seed(0))
    size = kwargs.get("input_size") or kwargs.get("img_size") or 224
    generator = torch.Generator().manual_seed(0)
    return torch.randn(batch, kwargs.get("in_chans", 3), size, size, generator=generator)


def export_model(model: Any, example: Any, path: Path, fmt: str) -> Any:
    """Write ``model`` (eval mode) traced at ``example`` to ``path`` in ``fmt``; returns a
    callable that runs the exported artifact on an input and gives a NumPy array."""
    import torch

    if fmt == "onnx":
        try:
            import onnxruntime
        except ImportError:
            raise ValueError("ONNX export needs onnx, onnxscript and onnxruntime: "
                             "pip install 'stepnet[onnx]'") from None
        batch = torch.export.Dim("batch", min=1)
        torch.onnx.export(model, (example,), str(path), dynamo=True, external_data=False,
                          input_names=["input"], output_names=["output"],
                          dynamic_shapes=({0: batch},), verbose=False)
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return lambda x: session.run(None, {"input": x.numpy()})[0]
    if fmt == "torchscript":
        with torch.no_grad():
            traced = torch.jit.trace(model, example, check_trace=False)
        traced.save(str(path))
        loaded = torch.jit.load(str(path))
        return lambda x: loaded(x).detach().numpy()
    if fmt == "exported-program":
        program = torch.export.export(model, (example,),
                                      dynamic_shapes=({0: torch.export.Dim("batch", min=1)},))
        torch.export.save(program, str(path))
        loaded = torch.export.load(str(path)).module()
        return lambda x: loaded(x).detach().numpy()
    raise ValueError(f"unknown format {fmt!r}; valid: {', '.join(FORMATS)}")


def run(args: argparse.Namespace) -> int:
    import os
    import tempfile
    import warnings

    import numpy as np
    import torch

    from ..engine import load_checkpoint, model_from_checkpoint
    from .common import check_writable

    if args.format not in FORMATS:
        raise ValueError(f"unknown format {args.format!r}; valid: {', '.join(FORMATS)}")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {args.batch_size}")
    checkpoint = load_checkpoint(args.checkpoint)
    model = model_from_checkpoint(checkpoint, weights=args.weights).eval()
    source = Path(checkpoint["path"])
    output = Path(args.output) if args.output else source.with_suffix(FORMATS[args.format])
    refuse_checkpoint_target(output)
    check_writable(output.parent)
    example = example_input(checkpoint, args.batch_size)
    # written beside the target under a temporary name, moved into place only once checked
    fd, name = tempfile.mkstemp(prefix=f".{output.name}.", suffix=".tmp", dir=output.parent)
    os.close(fd)
    pending = Path(name)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")   # exporters' deprecation and tracing chatter
            run_exported = export_model(model, example, pending, args.format)
            check = example_input(checkpoint, args.batch_size + 1)   # another batch size
            with torch.no_grad():
                expected = model(check).numpy()
            got = run_exported(check)
        difference = float(np.abs(got - expected).max())
        if not difference <= args.tolerance:
            raise ValueError(f"the exported model differs from the PyTorch model by "
                             f"{difference:.3g} (> --tolerance {args.tolerance}); nothing "
                             f"was written")
        os.replace(pending, output)
    finally:
        pending.unlink(missing_ok=True)
    print(json.dumps({"checkpoint": str(source), "format": args.format, "output": str(output),
                      "input_shape": list(example.shape), "max_abs_difference": difference}))
    return 0


def refuse_checkpoint_target(output: Path) -> None:
    """An export never replaces a stepnet checkpoint."""
    from ..engine import load_checkpoint

    if not output.is_file():
        return
    try:
        load_checkpoint(output, mmap=True)
    except (ValueError, OSError):
        return   # an earlier export or another file: replaced as asked
    raise ValueError(f"--output {output} is a stepnet checkpoint; an export never replaces "
                     f"one: choose another --output")


def add_commands(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "export", help="export a checkpoint to ONNX, TorchScript or an ExportedProgram",
        description="Export a checkpoint's model (eval mode; the weight average when the run "
        "kept one) with a dynamic batch dimension, then run the exported file on a fresh batch "
        "of another size and compare it with the PyTorch model (onnx: with onnxruntime).")
    parser.add_argument("checkpoint", help="a checkpoint file or a run directory")
    parser.add_argument("--format", default="onnx", help=f"{' | '.join(FORMATS)} (default: onnx)")
    parser.add_argument("--output", help="file to write (default: beside the checkpoint)")
    parser.add_argument("--batch-size", type=int, default=2, help="batch of the example input")
    parser.add_argument("--weights", choices=("auto", "raw", "ema"), default="auto")
    parser.add_argument("--tolerance", type=float, default=1e-3,
                        help="largest allowed absolute difference from PyTorch's output")
    parser.set_defaults(run=run)

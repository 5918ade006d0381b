"""``stepnet`` entry point: one sub-command per concern.

Errors a user can fix (unknown names, bad values, missing files) print one line to stderr and
exit 2, with no traceback; a non-finite loss exits 3 and Ctrl-C 130, each with one line. Only
the module of the command being run is imported, so ``stepnet --help`` and ``--version`` do not
load PyTorch.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from .. import __version__

# command -> (module in stepnet.cli that defines it, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "models": ("inventory", "list the registered models (--params: parameter table)"),
    "attention": ("inventory", "list the attention (step-size) modules"),
    "train": ("train", "train a model of any task (also under torchrun)"),
    "evaluate": ("train", "evaluate a checkpoint with its task's metrics (alias: eval)"),
    "summarize": ("train", "mean ± std over seeds of finished runs"),
    "stiffness": ("stiffness", "stiffness analysis (NSI, TNS, p_hat, SI) of a checkpoint"),
    "compare": ("compare", "stiffness and accuracy across runs (TNS-accuracy correlation)"),
    "export": ("export", "export a checkpoint to ONNX, TorchScript or an ExportedProgram"),
    "detect": ("detect", "draw a detection checkpoint's boxes on images"),
    "demo": ("demo", "train and analyse small models on embedded data"),
    "dynamics": ("dynamics", "looped self-attention on Sudoku (train, analyze)"),
}
ALIASES = {"eval": "evaluate"}


def _chosen_command(argv: Sequence[str]) -> str | None:
    for arg in argv:
        if not arg.startswith("-"):
            return ALIASES.get(arg, arg)
    return None


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The parser; with ``argv``, only the module of the command it names is imported (the
    other commands get a one-line stub), without it every command is built in full."""
    parser = argparse.ArgumentParser(
        prog="stepnet",
        description="Self-attention as a dynamical system: StepNet, attention modules, "
        "stiffness analysis, looped self-attention dynamics.")
    parser.add_argument("--version", action="version", version=f"stepnet {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    chosen = _chosen_command(argv) if argv is not None else None
    modules = ({COMMANDS[chosen][0]} if chosen in COMMANDS else set()) if argv is not None \
        else {module for module, _ in COMMANDS.values()}
    for module in sorted(modules):
        importlib.import_module(f"{__package__}.{module}").add_commands(sub)
    for name, (_, help_text) in COMMANDS.items():
        if name not in sub.choices:
            sub.add_parser(name, help=help_text, aliases=[a for a, t in ALIASES.items()
                                                            if t == name])
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    command = ALIASES.get(args.command, args.command)
    try:
        return int(args.run(args) or 0)
    except KeyboardInterrupt as error:
        print(f"stepnet {command}: interrupted" + (f"; {error}" if str(error) else ""),
              file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError,
            PermissionError) as error:
        print(f"stepnet {command}: error: {_one_line(error)}", file=sys.stderr)
        return 2
    except OSError as error:   # a full disk, an I/O error: what failed, where; nothing half-written
        where = f" ({error.filename})" if error.filename else ""
        print(f"stepnet {command}: error: {error.strerror or error}{where}; every file stepnet "
              f"writes is replaced atomically, so the last complete one is still in place",
              file=sys.stderr)
        return 2
    except Exception as error:
        from ..engine.rundir import RunLockedError
        from ..engine.trainer import NonFiniteLossError

        if isinstance(error, NonFiniteLossError):
            print(f"stepnet {command}: {_one_line(error)}", file=sys.stderr)
            return 3
        if isinstance(error, RunLockedError):
            print(f"stepnet {command}: error: {_one_line(error)}", file=sys.stderr)
            return 4
        raise


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text


if __name__ == "__main__":
    sys.exit(main())

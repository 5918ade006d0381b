"""``stepnet`` entry point: one sub-command per concern.

Errors a user can fix (unknown names, bad values) print one line to stderr and exit 2, with no
traceback.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ..engine import NonFiniteLossError
from . import demo, dynamics, inventory, stiffness, train


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stepnet",
        description="Self-attention as a dynamical system: StepNet, attention modules, analysis.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    inventory.add_commands(sub)
    stiffness.add_command(sub)
    train.add_commands(sub)
    demo.add_command(sub)
    dynamics.add_command(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except (ValueError, FileNotFoundError) as error:
        print(f"stepnet {args.command}: error: {error}", file=sys.stderr)
        return 2
    except NonFiniteLossError as error:
        print(f"stepnet {args.command}: {error}", file=sys.stderr)
        return 3
    except KeyboardInterrupt as error:
        print(f"stepnet {args.command}: interrupted" + (f"; {error}" if str(error) else ""),
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

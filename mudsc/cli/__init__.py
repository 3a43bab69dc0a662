"""The ``mudsc`` command, one module per sub-command: parse, validate, call the engine, write. No math
lives here; it may import every room and landscape."""
from __future__ import annotations

import argparse
import sys

# One explicit list; each module adds its sub-commands with register(subparsers).
from mudsc.cli import evaluate, landscape, merge, merge_same, spaces, stats, zoo
from mudsc.cli.common import launched, rank_prefix
from mudsc.errors import MudscError

COMMANDS = (zoo, evaluate, merge, merge_same, stats, landscape, spaces)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mudsc", description=__doc__.splitlines()[0])
    parser.add_argument("--device", help="compute device (default: cuda when present, else cpu)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMANDS:
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        with launched(args):  # under torchrun: this rank of the job
            return int(args.func(args) or 0)
    except MudscError as e:
        print(f"mudsc: error: {rank_prefix(args)}{e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mudsc: interrupted", file=sys.stderr)
        return 130


"""``mudsc eval``: accuracy of a checkpoint on a data set's held-out split."""
from __future__ import annotations

import argparse

from mudsc.cli.common import add_model_task_args, load_model_task, print_json


def register(sub: argparse._SubParsersAction) -> None:
    e = sub.add_parser("eval", help="evaluate a checkpoint")
    add_model_task_args(e, classes_help="task to evaluate (default: the model's own task)")
    e.add_argument("--json", action="store_true")
    e.set_defaults(func=_eval)


def _eval(args: argparse.Namespace) -> int:
    from mudsc.evaluate import accuracy

    model, data, classes = load_model_task(args)
    acc = accuracy(model, data.eval, classes, device=args.device)
    n = len(data.eval.subset(classes))
    if args.json:
        print_json({"accuracy": acc, "n": n})
    else:
        print(f"accuracy {acc:.4f} on {n} held-out examples of classes {list(classes)}")
    return 0

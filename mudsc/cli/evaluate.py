"""``mudsc eval``: accuracy of a checkpoint on a data set's held-out split."""
from __future__ import annotations

import argparse

from mudsc.cli.common import add_data_args, print_json


def register(sub: argparse._SubParsersAction) -> None:
    e = sub.add_parser("eval", help="evaluate a checkpoint")
    e.add_argument("--model", required=True, help="checkpoint (.safetensors)")
    add_data_args(e)
    e.add_argument("--classes", help="task to evaluate (default: the model's own task)")
    e.add_argument("--json", action="store_true")
    e.set_defaults(func=_eval)


def _eval(args: argparse.Namespace) -> int:
    from mudsc.data import load_dataset, parse_classes
    from mudsc.evaluate import accuracy
    from mudsc.models.checkpoint import load_model

    model, _ = load_model(args.model)
    data = load_dataset(args.dataset, args.data_dir)
    classes = parse_classes(args.classes, data.num_classes) if args.classes else tuple(model.classes)
    acc = accuracy(model, data.eval, classes, device=args.device)
    n = len(data.eval.subset(classes))
    if args.json:
        print_json({"accuracy": acc, "n": n})
    else:
        print(f"accuracy {acc:.4f} on {n} held-out examples of classes {list(classes)}")
    return 0

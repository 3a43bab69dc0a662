"""``mudsc zoo finetune``: a same-init task model, fine-tuned from a base checkpoint.

``mudsc/cli/zoo.py`` attaches it to its sub-commands with ``add_finetune(zsub)``.
"""
from __future__ import annotations

import argparse

from mudsc.cli.common import add_data_args, check_out, positive_int, print_record


def add_finetune(zsub: argparse._SubParsersAction) -> None:
    f = zsub.add_parser("finetune", help="fine-tune a base checkpoint's body on a task with a new head")
    f.add_argument("--base", required=True, help="the shared initialisation (.safetensors checkpoint)")
    add_data_args(f)
    f.add_argument("--classes", required=True, help="task: 0-4, 5-9, odd, even, 0,3,7 ...")
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--epochs", type=positive_int, default=5)
    f.add_argument("--head", choices=("own", "shared"), default="own")
    f.add_argument("--lr", type=float, default=1e-3)
    f.add_argument("--batch-size", type=positive_int, default=128)
    f.add_argument("--out", required=True, help="output .safetensors file")
    f.add_argument("--json", action="store_true")
    f.set_defaults(func=_finetune)


def _finetune(args: argparse.Namespace) -> int:
    from mudsc.zoo.finetune import finetune_parent

    check_out(args.out, folder=False)
    rec = finetune_parent(args.base, dataset=args.dataset, data_dir=args.data_dir,
                          data_img_size=args.data_img_size, classes=args.classes,
                          seed=args.seed, epochs=args.epochs, head=args.head, lr=args.lr,
                          batch_size=args.batch_size, out=args.out, device=args.device)
    print_record(rec, args.classes, as_json=args.json)
    return 0

"""``mudsc zoo train`` and ``mudsc zoo demo``: make parents."""
from __future__ import annotations

import argparse

from mudsc.cli.common import add_data_args, check_out, parse_kw, positive_int, print_json, print_record, progress_bar
from mudsc.cli.finetune import add_finetune


def register(sub: argparse._SubParsersAction) -> None:
    zoo = sub.add_parser("zoo", help="train parents")
    zsub = zoo.add_subparsers(dest="zoo_command", required=True, metavar="ZOO_COMMAND")

    t = zsub.add_parser("train", help="train a parent on a class subset")
    add_data_args(t)
    t.add_argument("--arch", required=True, help="mlp, cnn, resnet20, resnet20gn or timm:NAME")
    t.add_argument("--width", type=positive_int, help="width multiplier (mlp: hidden units)")
    t.add_argument("--classes", required=True, help="task: 0-4, 5-9, odd, even, 0,3,7 ...")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--epochs", type=positive_int, default=10)
    t.add_argument("--head", choices=("shared", "own"), default="shared")
    t.add_argument("--feat-dim", type=positive_int, default=64)
    t.add_argument("--lr", type=float, default=2e-3)
    t.add_argument("--batch-size", type=positive_int, default=128)
    t.add_argument("--kw", action="append", metavar="KEY=VALUE", help="architecture option (repeatable)")
    t.add_argument("--out", help="output .safetensors file (default: $MUDSC_HOME/zoo/ARCH.DATASET_TASK_sSEED.safetensors)")
    t.add_argument("--json", action="store_true", help="print the record as JSON")
    t.set_defaults(func=_train)

    add_finetune(zsub)

    d = zsub.add_parser("demo", help="make (or reuse) the built-in digits demo pair")
    d.add_argument("--json", action="store_true")
    d.set_defaults(func=_demo)


def _train(args: argparse.Namespace) -> int:
    from mudsc.zoo.demo import default_parent_path, train_parent

    kw = parse_kw(args.kw)
    out = args.out or default_parent_path(args.arch, args.dataset, args.classes, args.seed, kw.get("width"))
    check_out(out, folder=False)
    if args.width is not None:
        kw["width"] = args.width
    bar, update = progress_bar(f"train {args.arch} on {args.classes}")
    try:
        rec = train_parent(dataset=args.dataset, data_dir=args.data_dir, data_img_size=args.data_img_size,
                           arch=args.arch, classes=args.classes,
                           seed=args.seed, epochs=args.epochs, head=args.head, feat_dim=args.feat_dim,
                           lr=args.lr, batch_size=args.batch_size, out=out, device=args.device,
                           progress=update, **kw)
    finally:
        bar.close()
    print_record(rec, args.classes, as_json=args.json)
    return 0


def _demo(args: argparse.Namespace) -> int:
    from mudsc.models.checkpoint import load_model
    from mudsc.zoo.demo import demo_pair

    bar, update = progress_bar("demo parents")
    try:
        paths = demo_pair(progress=update)
    finally:
        bar.close()
    recs = [{"path": str(p), "accuracy": load_model(p)[1].get("accuracy")} for p in paths]
    if args.json:
        print_json(recs)
    else:
        for r in recs:
            print(f"{r['path']}: accuracy {r['accuracy']:.4f}")
    return 0

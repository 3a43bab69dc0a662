"""``mudsc spaces``: every tensor of an architecture with the unit space of each axis, or why it stays
fixed, and the share a merge reaches (:func:`mudsc.unitgraph.coverage.coverage`)."""
from __future__ import annotations

import argparse

from mudsc.cli.common import parse_kw, positive_int, print_json


def register(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("spaces", help="list the unit space of every tensor axis and the share a merge changes")
    s.add_argument("--arch", required=True, help="architecture: a registered name, timm:NAME, torchvision:NAME, "
                   "or your network as path/to/models.py:FUNCTION or package.module:FUNCTION, called with the "
                   "--kw options (importing it RUNS its code, so name only code you trust)")
    s.add_argument("--kw", action="append", metavar="KEY=VALUE", help="architecture option (repeatable)")
    s.add_argument("--img-size", type=positive_int, default=224,
                   help="input resolution of the example batch (default 224)")
    s.add_argument("--in-chans", type=positive_int, default=3, help="input channels (default 3)")
    s.add_argument("--num-classes", type=positive_int, default=10, help="classes of the model's own head (default 10)")
    s.add_argument("--seed", type=int, default=0, help="seeds the weights, the example batch and the permutations")
    s.add_argument("--json", action="store_true", help='one JSON object {"summary": ..., "tensors": [...]}')
    s.set_defaults(func=_spaces)


def _spaces(args: argparse.Namespace) -> int:
    import torch

    from mudsc.models import create_model
    from mudsc.models.external import builder, is_external
    from mudsc.unitgraph.coverage import coverage

    torch.manual_seed(args.seed)
    kw = parse_kw(args.kw)
    if is_external(args.arch):  # the network as its own code builds it, with its own last layer
        model = builder(args.arch)(**kw).eval()
    else:
        model = create_model(args.arch, classes=tuple(range(args.num_classes)), num_classes=args.num_classes,
                             head="own", in_chans=args.in_chans, img_size=args.img_size, **kw).eval()
    x = torch.randn(2, args.in_chans, args.img_size, args.img_size, generator=torch.Generator().manual_seed(args.seed))
    cov = coverage(model, x, seed=args.seed)
    if args.json:
        print_json(cov.to_dict())
        return 0
    width = max(len(r.param) for r in cov.tensors)
    for r in cov.tensors:
        axes = ", ".join(s or "-" for s in r.spaces) or "-"
        print(f"{r.param:<{width}}  {str(list(r.shape)):<18}  {axes}" + (f"  [fixed: {r.reason}]" if r.reason else ""))
    s = cov.summary
    print(f"{s['merged_tensors']} of {s['parameter_tensors']} parameter tensors in unit spaces "
          f"(merged_share {s['merged_share']:.3f}), {s['spaces']} spaces; "
          f"max relative output change under random permutations {s['max_rel_change']:.1e} (float64)")
    return 0

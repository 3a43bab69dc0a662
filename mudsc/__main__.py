"""``python -m mudsc`` (and ``torchrun -m mudsc``): the mudsc command."""
import sys

from mudsc.cli import main

sys.exit(main())

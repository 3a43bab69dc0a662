import sys

from mudsc.cli import main

sys.exit(main())

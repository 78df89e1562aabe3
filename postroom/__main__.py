"""`python -m postroom` is the `postroom` command."""

import sys

from postroom.cli import main

sys.exit(main())

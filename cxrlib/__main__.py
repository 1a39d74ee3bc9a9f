"""``python -m cxrlib`` (and ``accelerate launch -m cxrlib``): the command line."""

import sys

from cxrlib.cli import main

sys.exit(main())

"""`python -m clipasso`: the same as the `clipasso` command (what the extension starts the backend with)."""

import sys

from .cli import main

sys.exit(main())

"""``python -m migu ...`` (what ``torchrun`` and ``accelerate launch -m`` start on each rank)."""

import sys

from .cli import main

sys.exit(main())

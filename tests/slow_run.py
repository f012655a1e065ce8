"""``migu run`` with a test-only method, ``slow``, that sleeps before each optimizer step, so that
a signal sent once the first task is saved arrives while the second one trains:

    python tests/slow_run.py CONFIG [key=value ...]
"""

import sys
import time

from migu.cli import main
from migu.methods import METHODS, Method


class Slow(Method):
    name = "slow"
    stage = "gradient"

    def before_optimizer_step(self, model, ctx):
        time.sleep(0.3)


METHODS.register("slow", Slow)

if __name__ == "__main__":
    sys.exit(main(["run", *sys.argv[1:]]))

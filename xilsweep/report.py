"""``python -m xilsweep.report DIR [DIR ...]``: the sweep report (``xilsweep.results``)."""

import sys

from xilsweep.results.report import main

if __name__ == "__main__":
    sys.exit(main())

"""``python -m ftp_trainer``: the same program as ``ftp-train``."""

import sys

from ftp_trainer.cli import main

sys.exit(main())

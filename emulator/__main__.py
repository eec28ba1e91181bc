"""``python -m emulator serve|ctl`` — see `emulator.cli`."""

import sys

from emulator.cli import main

sys.exit(main())

"""`python -m mailer`: the same as the `mailer` command."""

import sys

from .cli import main

sys.exit(main())

"""`python -m domainbus`: the same as the `domainbus` command."""

import sys

from domainbus.cli import main

sys.exit(main())

"""`python -m cifarkit ...`"""

import sys

from .cli import main

sys.exit(main())

"""`python -m mclnf_city.export ...` is `mclnf-export ...`."""

import sys

from mclnf_city.export.cli import main

sys.exit(main())

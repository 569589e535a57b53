"""`python -m neucodec_assets.cli`: the same as the `neucodec-platform` command."""

import sys

from neucodec_assets.cli.main import main

sys.exit(main())

"""The command-line tools: `neucodec-platform` (main), the demo, adoption of existing tokens files, the legacy
import, the precision comparison, backfills the way the UI makes them, and what reaches the terminal (console)."""

from neucodec_assets.cli.main import main

__all__ = ["main"]

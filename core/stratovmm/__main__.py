"""The ``stratovmm`` command (and ``python -m stratovmm``): the CLI with the garbage
collector paused from its first import until the VM is built (``stratovmm.host.gcpause``
says why)."""

from __future__ import annotations

import sys

from stratovmm.host import gcpause


def main(argv: list[str] | None = None) -> int:
    """Pause the collector, then import and run ``stratovmm.cli.main``."""
    gcpause.pause()  # before the CLI's imports: they allocate most of start-up's objects
    from stratovmm.cli import main as cli_main

    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main())

"""The ``ssdkit`` command line (see :mod:`ssdkit.cli.main`)."""

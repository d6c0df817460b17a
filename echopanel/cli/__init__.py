"""The ``echopanel`` command line: ``serve``, ``listen``, ``demo``."""

"""The server unit tests (a package so that the pair tests can share ``_pair``)."""

"""The ``stepnet`` command line."""

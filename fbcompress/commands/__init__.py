"""The command line: one Click group, each command a thin layer over one library call."""

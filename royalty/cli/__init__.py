"""The `royalty` command line: thin commands that parse arguments and call package APIs."""

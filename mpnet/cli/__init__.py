"""The command-line tools, one thin module per command (see docs/cli.md)."""

"""The `taskmon` command families; cli.py registers them on the top-level group."""

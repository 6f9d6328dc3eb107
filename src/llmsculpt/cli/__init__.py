"""`sculpt <command>`: one file per command."""

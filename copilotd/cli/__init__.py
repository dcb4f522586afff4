"""The command line: ``copilotd serve`` and the commands that talk to a running daemon."""

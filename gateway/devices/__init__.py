"""Base stations in: serial and network receivers -> framers -> decoders -> typed events."""

"""Decoders turn one frame into device events. Pure: bytes in, typed events out."""

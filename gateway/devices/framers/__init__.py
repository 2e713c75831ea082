"""Framers cut a byte stream into frames. Pure and transport-free: bytes in, frames out.

Every framer resynchronises after garbage: a bad candidate costs one byte, never the frames
after it, and whatever is skipped is reported with a reason so ports can count it.
"""

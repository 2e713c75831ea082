"""Faces at the counter: camera -> detect -> quality -> align/embed -> gallery search -> decide.

Kept import-light: the heavy modules (OpenCV, onnxruntime) load only when the stage runs.
"""

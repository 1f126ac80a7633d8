"""Implementations behind the thin ``model.py`` files of ``model_repository/``.

These modules import ``triton_python_backend_utils`` and so load only inside Triton's Python backend.
"""

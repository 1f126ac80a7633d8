"""Quality: clip metrics, the prompt-adherence detector, INT8 sensitivity sweeps and the quality gate.

``python -m t2vserve.quality`` (``make quality``) runs the gated report of ``report.py``.
"""

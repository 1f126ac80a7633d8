"""t2vserve: text-to-video diffusion served by Triton Inference Server."""

__version__ = "0.1.0"

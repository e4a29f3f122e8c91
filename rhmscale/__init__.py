"""rhmscale: sample complexity of masked diffusion models on the Random Hierarchy Model."""

__version__ = "0.1.0"

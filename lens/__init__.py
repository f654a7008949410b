"""lens: automatic lens-distortion correction at production scale."""

__version__ = "0.1.0"

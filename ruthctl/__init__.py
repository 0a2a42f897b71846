"""ruthctl: the operator CLI that serves, configures and reconciles the Ruth AI runtime on Triton."""

__all__ = ["__version__"]

__version__ = "0.1.0"

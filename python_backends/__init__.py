"""The hardening library every Ruth model.py stands on (runs inside Triton's Python-backend stub processes).

Import what you need from its modules: `python_backends.vision.RuthModel` (or
`python_backends.raw.RawRuthModel`, `python_backends.pose_client.PersonModel`) for a model, `python_backends.errors` for
the errors a model may raise. Importing this package does no work.
"""

__all__: list[str] = []

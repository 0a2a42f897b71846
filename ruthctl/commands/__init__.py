"""One module per command; each exposes `register(app)` or a Typer sub-app named `app`."""

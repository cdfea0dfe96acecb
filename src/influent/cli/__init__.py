"""The `influent` command line (typer + rich)."""
from .main import app

__all__ = ["app"]

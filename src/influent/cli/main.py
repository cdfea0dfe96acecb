"""`influent demo` and `influent info`; errors print as one line plus a hint, not a traceback."""
from __future__ import annotations

import platform
import sys

import typer
from rich.console import Console

from ..errors import InfluentError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Which training examples made my model do this?")
console = Console()


@app.command()
def demo(n_train: int = typer.Option(1000, help="training examples from sklearn digits"),
         n_queries: int = typer.Option(4, help="test predictions to explain"),
         top: int = typer.Option(3, help="proponents/opponents shown per query"),
         quiet: bool = typer.Option(False, "--quiet", help="no progress output"),
         debug: bool = typer.Option(False, "--debug", help="show tracebacks")) -> None:
    """Train a digits MLP, attribute a few test predictions, print proponents and opponents."""
    from .demo import run_demo
    _guarded(lambda: run_demo(console, n_train=n_train, n_queries=n_queries, top=top, progress=not quiet), debug)


def _guarded(job, debug: bool) -> None:
    """Run a command: an InfluentError exits 2, anything else 1, each as one line plus a hint."""
    try:
        job()
    except InfluentError as e:
        if debug:
            raise
        console.print(f"[red]error:[/red] {e}")
        raise typer.Exit(2)
    except (KeyboardInterrupt, typer.Exit):
        raise
    except Exception as e:  # noqa: BLE001 - the CLI's last line of defence
        if debug:
            raise
        console.print(f"[red]unexpected error:[/red] {type(e).__name__}: {e} (rerun with --debug for the traceback)")
        raise typer.Exit(1)


@app.command()
def info() -> None:
    """Versions, threads and devices."""
    import torch

    from .. import __version__
    console.print(f"influent {__version__}  python {platform.python_version()}  torch {torch.__version__}")
    console.print(f"threads {torch.get_num_threads()}  cuda {torch.cuda.is_available()}"
                  f"{' (' + torch.cuda.get_device_name(0) + ')' if torch.cuda.is_available() else ''}")


def main() -> None:  # pragma: no cover
    sys.exit(app())

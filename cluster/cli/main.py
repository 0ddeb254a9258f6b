"""The `raytron` command: one Typer app, one module per subcommand."""

from __future__ import annotations

import sys

import click
import typer

from raytron.cluster.cli import bench, data, down, export, jobs, logs, serve, status, stop, submit, up
from raytron.cluster.cli import gateway, k8s
from raytron.cluster.cli import autoscaler

app = typer.Typer(
    name="raytron",
    help="From WebDataset shards to a served gRPC endpoint, on Ray. Exit codes: 0 success, 1 job failed, 2 bad input.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
for module in (up, down, status, submit, jobs, logs, stop, export, serve, bench):
    app.command(module.NAME, help=module.command.__doc__, context_settings=getattr(module, "CONTEXT_SETTINGS", None))(module.command)
app.add_typer(data.app, name=data.NAME)
app.add_typer(k8s.app, name=k8s.NAME)
app.command(gateway.NAME, help=gateway.command.__doc__)(gateway.command)
app.command(autoscaler.NAME, help=autoscaler.command.__doc__)(autoscaler.command)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; raytron's errors become a one-message stderr and their exit code."""
    from raytron.cluster.cli._common import err
    from rich.markup import escape

    from raytron.cluster.errors import RaytronError

    command = typer.main.get_command(app)
    try:
        result = command.main(args=argv, prog_name="raytron", standalone_mode=False)
    except click.exceptions.UsageError as exc:
        exc.show()
        return 2
    except click.exceptions.Abort:
        err.print("aborted")
        return 130
    except KeyboardInterrupt:
        err.print("interrupted")
        return 130
    except RaytronError as exc:
        # The message is plain text: escaped, so `[low, high]` or `[::]` in it is printed, not read as Rich markup.
        err.print(f"[red]error:[/] {escape(str(exc))}", markup=True, highlight=False)
        return exc.exit_code
    except click.exceptions.ClickException as exc:
        exc.show()
        return exc.exit_code
    return result if isinstance(result, int) else 0


def entrypoint() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entrypoint()

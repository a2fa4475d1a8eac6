"""The ``medcore-tp`` command line: thin Click commands that parse options and call the library."""

from __future__ import annotations

import click

from medcore_tp.cli._common import Interrupted
from medcore_tp.errors import MedcoreError


class _Group(click.Group):
    """A Click group that turns library errors into one-line messages instead of tracebacks."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except MedcoreError as exc:
            from medcore_tp.cli._common import param_flags

            raise click.UsageError(exc.with_flags(param_flags(ctx.invoked_subcommand))) from None
        except (KeyboardInterrupt, Interrupted) as exc:
            # One line saying what was kept, and the shell's convention for SIGINT (128 + 2).
            kept = str(exc) if isinstance(exc, Interrupted) else "nothing was written"
            click.echo(f"Interrupted: {kept}", err=True)
            ctx.exit(130)


@click.group(cls=_Group)
@click.version_option(package_name="medcore-tp")
def main() -> None:
    """Boundary-preserving structured pruning of MedSAM-style encoders."""


def _register() -> None:
    # Imported here so that each command lives in its own module and the group stays tiny.
    from medcore_tp.cli import bench, evaluate, export, finetune, info, leverage, prune, sweep  # noqa: F401


_register()

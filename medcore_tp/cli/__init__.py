"""The ``medcore-tp`` command line: thin Click commands that parse options and call the library."""

from __future__ import annotations

import click

from medcore_tp.cli._common import Interrupted
from medcore_tp.errors import MedcoreError


class _Group(click.Group):
    """A Click group that turns library errors into one-line messages instead of tracebacks."""

    def resolve_command(self, ctx: click.Context, args: list[str]):
        name, cmd, rest = super().resolve_command(ctx, args)
        ctx.meta[_SUBCOMMAND_ARGS] = rest  # for main(), which runs before the subcommand parses them
        return name, cmd, rest

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


_SUBCOMMAND_ARGS = "medcore_tp.subcommand_args"
# commands that run no model forward leave glibc's defaults alone
_LIGHT_COMMANDS = {"info"}


@click.group(cls=_Group)
@click.version_option(package_name="medcore-tp")
@click.option("--release-freed-memory", is_flag=True, envvar="MEDCORE_TP_RELEASE_FREED_MEMORY", show_envvar=True,
              help="Leave glibc's malloc at its defaults, which unmap large freed blocks at once. By default "
                   "medcore-tp keeps them for reuse (medcore_tp.allocator): eager CPU runs avoid the page faults "
                   "(LiteMedSAM's encoder 1.6x faster on the 2-core CPU) and keep their peak host memory, plus "
                   "some fragmentation, resident. Give it before the command: medcore-tp --release-freed-memory "
                   "bench ...")
def main(release_freed_memory: bool) -> None:
    """Boundary-preserving structured pruning of MedSAM-style encoders."""
    ctx = click.get_current_context()
    # no message: it would stand before every one-line error; bench's header and records say it
    if not (release_freed_memory or ctx.invoked_subcommand in _LIGHT_COMMANDS
            or "--help" in ctx.meta.get(_SUBCOMMAND_ARGS, ())):
        from medcore_tp.allocator import keep_freed_memory

        keep_freed_memory()


def _register() -> None:
    # Imported here so that each command lives in its own module and the group stays tiny.
    from medcore_tp.cli import bench, evaluate, export, finetune, info, leverage, prune, sweep  # noqa: F401


_register()

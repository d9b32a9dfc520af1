"""`seqinfer token new`: a fresh bearer token, and the line that admits it in a token file.

The token is printed once, for the operator to hand to the tenant; the
server's file keeps only its sha256 (``service.tenants``), so a leaked token
file admits nobody. Imports no torch.
"""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    group = typer.Typer(help="Bearer tokens for auth_token_file (docs/security.md).")
    app.add_typer(group, name="token")

    @group.command("new")
    def new(
        tenant: str = typer.Option(..., "--tenant", help="Tenant the token stands for."),
        max_sessions: int = typer.Option(0, min=0, help="Open sessions quota; 0 = none."),
        steps_per_second: float = typer.Option(0.0, min=0.0, help="Steps/s quota; 0 = none."),
    ) -> None:
        """Print a new token (give it to the tenant) and its token-file line (keep that)."""
        from seqinfer.service.tenants import new_token, token_hash

        if not tenant.isprintable() or not tenant or " " in tenant or "#" in tenant:
            raise typer.BadParameter("a tenant name is printable text without spaces or '#'")
        token = new_token()
        options = ""
        if max_sessions:
            options += f" max_sessions={max_sessions}"
        if steps_per_second:
            options += f" steps_per_second={steps_per_second:g}"
        typer.echo(f"token: {token}")
        typer.echo(f"line:  {token_hash(token)} {tenant}{options}")

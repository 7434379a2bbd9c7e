"""The caller's account: its credits and the secret its webhooks are signed with."""

from __future__ import annotations

from reelgen import webhooks
from reelgen.service.context import Context
from reelgen.store import ledger

__all__ = ["credits", "webhook_secret"]


def credits(ctx: Context, account_id: str) -> dict[str, int]:
    """Available credits and credits held by pending/processing tasks."""
    bal = ctx.db.run(lambda conn: ledger.balance(conn, account_id))
    return {"credits": bal.available, "reserved": bal.reserved}


def webhook_secret(ctx: Context, account_id: str) -> dict[str, str]:
    """The secret the account's webhooks are signed with (``whsec_...``, Standard Webhooks)."""
    return {"secret": webhooks.account_secret(ctx.secret, account_id)}

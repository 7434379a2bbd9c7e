"""Test factories: accounts with keys and credits, made through the real store."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from reelgen import service
from reelgen.schemas import IMAGE_TO_VIDEO, TEXT_TO_VIDEO
from reelgen.store import keys, ledger


@dataclass(frozen=True)
class Account:
    id: str
    key: str
    key_id: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}


def make_account(ctx: service.Context, credits: int = 0, name: str = "test") -> Account:
    def create(conn: Any) -> Account:
        account_id = keys.create_account(conn, name)
        if credits:
            ledger.grant(conn, account_id, credits, datetime.now(UTC))
        issued = keys.issue_key(conn, account_id, name, ctx.secret)
        return Account(id=account_id, key=issued.key, key_id=issued.key_id)

    result: Account = ctx.db.run(create, immediate=True)
    return result


def generate_body(model: str = TEXT_TO_VIDEO, **inp: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"prompt": "a red fox runs through snow", "duration": 3}
    if model == IMAGE_TO_VIDEO and "image_urls" not in inp:
        raise ValueError("image-to-video bodies need image_urls")
    return {"model": model, "input": {**base, **inp}}

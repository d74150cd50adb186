"""The one check the policy configs' validators share: a condition, or a ValueError that names
what was expected and the value given (pydantic reports it under the field's group)."""

from __future__ import annotations


def need(ok: bool, what: str, value: object) -> None:
    if not ok:
        raise ValueError(f"{what}, but was {value!r}")

"""No service password in clear in SQL: config rows written before passwords were hashed.

config_event.record loses its ``service_password`` (the projector now stores records
without it); config_object.body of an account gets, instead of the password, the HA1s the
fold now derives from it (MD5 and SHA-256 of ``account_id:realm:password`` in the
environment's default realm, its name), exactly as the projector writes a re-read record.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-04 15:00:00

"""
import hashlib
import json
from typing import Any, Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: Union[str, Sequence[str], None] = "0004"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

_EVENTS = sa.table("config_event", sa.column("source_topic"), sa.column("source_partition"),
                   sa.column("source_offset"), sa.column("record"))
_OBJECTS = sa.table("config_object", sa.column("environment"), sa.column("kind"), sa.column("key"),
                    sa.column("body"))


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False)  # as projections.models.to_json


def _ha1s(environment: str, account_id: str, password: str) -> dict[str, str]:
    if not password:
        return {"digest_realm": "", "ha1_md5": "", "ha1_sha256": ""}
    text = f"{account_id}:{environment}:{password}".encode("utf-8", "surrogateescape")
    return {"digest_realm": environment, "ha1_md5": hashlib.md5(text).hexdigest(),
            "ha1_sha256": hashlib.sha256(text).hexdigest()}


def upgrade() -> None:
    conn = op.get_bind()
    e = _EVENTS.c
    events = conn.execute(sa.select(e.source_topic, e.source_partition, e.source_offset, e.record)
                          .where(e.record.like('%"service_password"%'))).all()
    for topic, partition, offset, text in events:
        record = json.loads(text)
        record.pop("service_password", None)
        conn.execute(_EVENTS.update().where(e.source_topic == topic, e.source_partition == partition,
                                            e.source_offset == offset).values(record=_json(record)))
    objects = conn.execute(sa.select(_OBJECTS.c.environment, _OBJECTS.c.kind, _OBJECTS.c.key, _OBJECTS.c.body)
                           .where(_OBJECTS.c.kind == "account",
                                  _OBJECTS.c.body.like('%"service_password"%'))).all()
    for environment, kind, key, text in objects:
        body = json.loads(text)
        body |= _ha1s(environment, body.get("account_id", key), body.pop("service_password", "") or "")
        conn.execute(_OBJECTS.update().where(_OBJECTS.c.environment == environment, _OBJECTS.c.kind == kind,
                                             _OBJECTS.c.key == key).values(body=_json(body)))


def downgrade() -> None:
    """The passwords are gone for good: nothing to restore."""

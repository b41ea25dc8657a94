"""A small workspace and customer set for planner tests, written straight into storage."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from orchestrator.storage.engine import write_transaction
from orchestrator.storage.schema import customer_stats, customers

SETTINGS = """\
[general]
timezone = "Europe/Moscow"
country = "RU"
secret_key = "test-secret"

[database]
url = "{url}"

[planner]
batch_size = {batch}
"""

SMS_TEMPLATE = "{{ customer.first_name|default('Покупатель') }}, скидка {{ offer.discount }}% & подарок"
EMAIL_TEMPLATE = (
    "{% block subject %}Новости для {{ customer.first_name|default('вас') }}{% endblock %}"
    "<p>Здравствуйте, {{ customer.name|default('покупатель') }}!</p>"
    "<p><a href=\"{{ links.unsubscribe }}\">Отписаться</a></p>"
)
PHONE_TEMPLATE = "Позвонить {{ customer.name|default('клиенту') }}, предложить скидку {{ offer.discount }}%"


def make_workspace(root: Path, url: str, *, batch: int = 2000) -> Path:
    for folder in ("segments", "campaigns", "templates/sms", "templates/email", "templates/phone"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    (root / "settings.toml").write_text(SETTINGS.format(url=url, batch=batch), encoding="utf-8")
    (root / "segments" / "everyone.yaml").write_text("description: all\nwhere:\n  all:\n    - id: {is_null: false}\n", encoding="utf-8")
    (root / "templates" / "sms" / "hello.txt.j2").write_text(SMS_TEMPLATE, encoding="utf-8")
    (root / "templates" / "email" / "hello.html.j2").write_text(EMAIL_TEMPLATE, encoding="utf-8")
    (root / "templates" / "phone" / "hello.txt.j2").write_text(PHONE_TEMPLATE, encoding="utf-8")
    return root / "settings.toml"


def write_campaign(root: Path, name: str, **fields: Any) -> Path:
    import yaml

    data = {"name": name, "segment": "everyone", "category": "promo", "channels": ["sms"],
            "template": "hello", "offer": {"discount": 7}, **fields}
    path = root / "campaigns" / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return path


def customer(cid: str, **fields: Any) -> dict[str, Any]:
    now = int(time.time())
    row = {
        "id": cid, "name": f"Клиент {cid}", "first_name": "Анна", "email": f"{cid.lower()}@example.com",
        "phone": "+79120000000", "timezone": "Europe/Moscow", "city": None, "manager": "ivanova",
        "consent_email": True, "consent_sms": True, "consent_phone": True, "zones": "Europe/Moscow",
        "zone_source": "column", "created_at": now, "updated_at": now, "attrs": {},
    }
    row.update(fields)
    return row


def insert_customers(engine: sa.Engine, rows: list[dict[str, Any]]) -> None:
    keys = set().union(*(row.keys() for row in rows))
    full = [{key: row.get(key) for key in keys} for row in rows]
    with write_transaction(engine) as conn:
        conn.execute(customers.insert(), full)
        conn.execute(customer_stats.insert(), [
            {"customer_id": row["id"], "purchases_count": 0, "total_spent": 0.0, "updated_at": row["created_at"]}
            for row in rows])

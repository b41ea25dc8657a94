"""Signed unsubscribe links and the personal-cabinet link put into every message.

An unsubscribe link must work without a login (one click from a mail client, RFC 8058), so it carries
who is unsubscribing from what, signed with the workspace secret: nobody can forge a link for
another customer.  The token is ``<payload>.<signature>``: the payload is the JSON array
``[customer_id, channel, campaign]`` in base64url without padding (any id, however long and
whatever its characters, survives), the signature the first 16 bytes (128 bits) of
HMAC-SHA256 over a versioned domain string and the payload, also base64url.  The token uses only
``A-Z a-z 0-9 - _ .``: nothing a URL, an email header or a folding mail client needs to escape.

An empty secret still yields links (so that `plan` and previews work on a fresh workspace), but
`verify_unsubscribe` refuses every token: a link signed with an empty key proves nothing.  The CLI
warns about the empty secret.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from functools import lru_cache

from orchestrator.errors import InputError

_DOMAIN = b"orchestrator-unsubscribe-v1."
_SIGNATURE_BYTES = 16
_MAX_TOKEN_CHARS = 8192


def unsubscribe_link(
    base_url: str, secret: str, customer_id: str, channel: str, campaign: str
) -> str:
    """`<base_url>/u/<token>`: one click unsubscribes this customer from this channel."""
    return f"{base_url.rstrip('/')}/u/{unsubscribe_token(secret, customer_id, channel, campaign)}"


def unsubscribe_token(secret: str, customer_id: str, channel: str, campaign: str) -> str:
    payload = json.dumps(
        [str(customer_id), str(channel), str(campaign)], ensure_ascii=False, separators=(",", ":")
    ).encode("utf-8")
    encoded = _b64encode(payload)
    return f"{encoded}.{_sign(secret, encoded)}"


def verify_unsubscribe(secret: str, token: str) -> tuple[str, str, str]:
    """(customer_id, channel, campaign) of a genuine token; InputError for anything else."""
    if not secret:
        raise InputError(
            "unsubscribe links cannot be verified: general.secret_key is empty "
            "(set ORCHESTRATOR_GENERAL_SECRET_KEY)"
        )
    invalid = InputError("this unsubscribe link is invalid or was altered")
    token = token.strip()
    if len(token) > _MAX_TOKEN_CHARS or token.count(".") != 1:
        raise invalid
    encoded, signature = token.split(".")
    # compare_digest raises TypeError for a non-ASCII str: a link edited to hold `é` (or `%C3%A9`)
    # must be refused like any other altered link, not end as a server error.
    if not signature.isascii() or not hmac.compare_digest(_sign(secret, encoded), signature):
        raise invalid
    try:
        values = json.loads(_b64decode(encoded).decode("utf-8"))
    except (ValueError, binascii.Error):
        raise invalid from None
    if not (isinstance(values, list) and len(values) == 3 and all(isinstance(v, str) for v in values)):
        raise invalid
    return values[0], values[1], values[2]


def cabinet_link(base_url: str, customer_id: str) -> str:
    """The personal cabinet's address.

    Plain and the same for everyone: the cabinet asks the customer to log in, so the link must not
    act as a credential (messages get forwarded).  `customer_id` is accepted so that a deployment
    can later personalise it without changing the callers.
    """
    del customer_id
    return f"{base_url.rstrip('/')}/cabinet"


@lru_cache(maxsize=8)
def _keyed(secret: str) -> "hmac.HMAC":
    """An HMAC already keyed with the secret: copying it is cheaper than keying per recipient."""
    mac = hmac.new(secret.encode("utf-8"), digestmod=hashlib.sha256)
    mac.update(_DOMAIN)
    return mac


def _sign(secret: str, encoded_payload: str) -> str:
    mac = _keyed(secret).copy()
    mac.update(encoded_payload.encode("ascii", "replace"))
    return _b64encode(mac.digest()[:_SIGNATURE_BYTES])


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes:
    if not text.isascii():
        raise ValueError("not base64")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))

"""The webhook channel: the rendered message POSTed as JSON to a URL (SPEC 8).

For personal cabinets, messengers and CRMs that take messages over HTTP.  The receiver must be
able to trust what it gets, so every request carries `X-Signature: sha256=<hex>`, an HMAC-SHA256
of the exact body bytes with the `secret` option (from ORCHESTRATOR_CHANNELS_WEBHOOK_SECRET), and
`X-Ref`, the ledger reference, which the receiver can use to drop a duplicate.

Body: `{"ref", "channel", "customer_id", "address", "content"}` as compact UTF-8 JSON.

Outcomes follow the SMS gateway's rules (channels.sms): 2xx sent (the provider id from
`message_id_field` in a JSON answer, if configured), 408/429/5xx transient, other statuses
permanent with the answer kept, a request that could not be sent transient, a timeout or a
dropped connection after sending unknown.

Options: `url`, `secret`, `message_id_field`, `headers` (name → template over settings only:
e.g. `Authorization = "Bearer {{ token }}"` with a `token` option), `timeout` (seconds, default
10), `max_connections` (default 10).  Without a secret no signature is sent: fine on a trusted
network, but receivers then cannot tell a forged call from ours.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping, Sequence
from typing import Any

import httpx

from channels.base import Message, SendResult
from channels.sms import (
    MISSING,
    JsonPath,
    PooledHttpChannel,
    TemplateSet,
    check_secrets,
    check_url,
    classify_status,
    json_answer,
    reject_unused_secrets,
    split_headers,
)
from orchestrator.errors import ConfigError

_NOTHING_RENDERED: Sequence[str] = ()


def signature(secret: str | bytes, body: bytes) -> str:
    """The X-Signature value for `body`; receivers compute the same and compare in constant time."""
    key = secret.encode("utf-8") if isinstance(secret, str) else secret
    return "sha256=" + hmac.new(key, body, hashlib.sha256).hexdigest()


class Webhook(PooledHttpChannel):
    """POSTs each message as signed JSON to one URL."""

    def __init__(
        self,
        name: str,
        *,
        url: str = "",
        secret: str = "",
        message_id_field: str | None = None,
        headers: Mapping[str, Any] | None = None,
        timeout: float = 10,
        max_connections: int = 10,
        **secrets: Any,
    ) -> None:
        secrets = check_secrets(name, secrets)
        templates = TemplateSet(name, secrets, dynamic=())
        if not isinstance(secret, str):
            raise ConfigError("must be text", field=templates.field("secret"))
        if headers is not None and not isinstance(headers, Mapping):
            raise ConfigError("must be a table of templates", field=templates.field("headers"))
        static_headers, _ = split_headers(templates, headers or {})
        static_headers["Content-Type"] = b"application/json"
        super().__init__(name, timeout=timeout, max_connections=max_connections, headers=static_headers)
        self.url = httpx.URL(check_url(templates.render_now(url, "url") if isinstance(url, str) else url, templates.field("url")))
        self._secret = secret.encode("utf-8")
        self.message_id_field = JsonPath(message_id_field, templates, "message_id_field") if message_id_field else None
        reject_unused_secrets(templates, secrets)

    async def send(self, message: Message) -> SendResult:
        try:
            body = self.body(message)
        except (TypeError, ValueError) as error:
            return SendResult.permanent(f"the message cannot be written as JSON: {error}")
        headers = {"X-Ref": message.ref.encode("utf-8")}
        if self._secret:
            headers["X-Signature"] = signature(self._secret, body).encode("ascii")
        answer = await self._request("POST", self.url, body, headers)
        if isinstance(answer, SendResult):
            return answer
        if not 200 <= answer.status_code < 300:
            return classify_status(answer.status_code, answer.content)
        return SendResult.sent(self._provider_id(answer.content))

    @staticmethod
    def body(message: Message) -> bytes:
        """The exact bytes that are signed and sent."""
        document = {
            "ref": message.ref,
            "channel": message.channel,
            "customer_id": message.customer_id,
            "address": message.address,
            "content": dict(message.content),
        }
        return json.dumps(document, ensure_ascii=False, separators=(",", ":"), default=str).encode("utf-8")

    def _provider_id(self, body: bytes) -> str | None:
        if self.message_id_field is None:
            return None
        value = self.message_id_field.find(json_answer(body), _NOTHING_RENDERED)
        return None if value is MISSING or value is None or value == "" else str(value)

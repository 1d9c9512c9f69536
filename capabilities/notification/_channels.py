"""The I/O channels: webhook (Standard Webhooks signing and the SSRF checks of the webhook
capability) and email (aiosmtplib)."""

from __future__ import annotations

import json
import time
from email.message import EmailMessage
from typing import Any

from onex_compose.capabilities.notification._model import (
    EmailChannel,
    Notification,
    WebhookChannel,
)
from onex_compose.capabilities.webhook._signing import Signer
from onex_compose.capabilities.webhook._ssrf import TargetPolicy, vet

__all__ = ["build_email", "send_email", "send_webhook"]


def policy_for(conf: WebhookChannel, node_policy: TargetPolicy | None = None) -> TargetPolicy:
    """The SSRF policy for a webhook channel: the channel's own fields, widened by the webhook
    capability's policy when that is composed (``node_policy``).

    Example:
        >>> policy_for(WebhookChannel(type="webhook", url="https://x.example")).allow_http
        False
    """
    own = TargetPolicy(conf.allow_http, conf.allow_private_networks,
                       tuple(h.lower() for h in conf.allowed_hosts), None)
    if node_policy is None:
        return own
    return TargetPolicy(own.allow_http or node_policy.allow_http,
                        own.allow_private_networks or node_policy.allow_private_networks,
                        own.allowed_hosts + node_policy.allowed_hosts,
                        node_policy.allowed_ports)


async def send_webhook(conf: WebhookChannel, note: Notification,
                       node_policy: TargetPolicy | None = None) -> None:
    """POST the notification as JSON to the vetted, pinned address, signed when a secret is
    configured (``webhook-id`` is ``msg_<notification id>``).

    Raises:
        WebhookTargetError: the URL fails the SSRF checks.
        httpx.HTTPStatusError: a non-2xx answer.
    """
    import httpx

    target = await vet(conf.url, policy_for(conf, node_policy))
    body = json.dumps(note.to_dict(), default=str, separators=(",", ":")).encode()
    headers = {"content-type": "application/json", "host": target.host_header,
               "user-agent": "onex-compose-notifier"}
    if conf.secret is not None:
        headers.update(Signer([conf.secret.get_secret_value()]).headers(
            f"msg_{note.id}", int(time.time()), body))
    async with httpx.AsyncClient(follow_redirects=False, trust_env=False) as client:
        resp = await client.post(target.pinned_url, content=body, headers=headers,
                                 extensions=target.extensions())
        resp.raise_for_status()


def build_email(conf: EmailChannel, note: Notification) -> EmailMessage:
    """The mail for a notification: subject ``[SEVERITY] title``, the message as body.

    Example:
        >>> ch = EmailChannel(type="email", to=["ops@example.com"])
        >>> build_email(ch, Notification("1", "DB down", "gone", "critical"))["Subject"]
        '[CRITICAL] DB down'
    """
    msg = EmailMessage()
    msg["Subject"] = f"[{note.severity.upper()}] {note.title}"
    msg["From"] = conf.from_addr
    msg["To"] = ", ".join(conf.to)
    msg["X-Onex-Notification-Id"] = note.id
    msg["X-Onex-Severity"] = note.severity
    if note.tags:
        msg["X-Onex-Tags"] = ",".join(note.tags)
    if note.source:
        msg["X-Onex-Source"] = note.source
    body = note.message
    if note.repeats:
        body += f"\n\n(repeated {note.repeats} more time(s) since the last notification)"
    if note.data is not None:
        body += "\n\n" + json.dumps(note.data, default=str, indent=2)
    msg.set_content(body)
    return msg


async def send_email(conf: EmailChannel, note: Notification, timeout: float) -> None:
    """Send the notification's mail through SMTP (aiosmtplib)."""
    import aiosmtplib

    kwargs: dict[str, Any] = {"hostname": conf.host, "port": conf.port, "timeout": timeout,
                              "start_tls": conf.starttls, "use_tls": conf.use_tls}
    if conf.username is not None:
        kwargs["username"] = conf.username
        kwargs["password"] = conf.password.get_secret_value() if conf.password else ""
    await aiosmtplib.send(build_email(conf, note), **kwargs)

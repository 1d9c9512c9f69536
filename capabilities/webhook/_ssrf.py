"""SSRF protection for outgoing HTTP: URL policy, address vetting and IP pinning (reusable).

:func:`vet` checks a target URL against a :class:`TargetPolicy` and returns a
:class:`VettedTarget` whose ``pinned_url`` points at the vetted IP; the request carries the
original name in ``Host`` and in TLS SNI (httpx's ``sni_hostname`` extension), so a DNS answer
that changes between the check and the connect (rebinding) cannot redirect it.

Checks, in order (each failure a :class:`WebhookTargetError` with its ``reason``):

* ``userinfo``: ``https://user:pass@host/`` is refused;
* ``scheme``: https, or http when ``allow_http``;
* ``host_not_allowed``: with a non-empty ``allowed_hosts``, the host must match one entry
  (exact, or ``*.suffix``); a match also lifts the private-address refusal for that host;
* ``port``: ``allowed_ports`` when set;
* ``unresolvable``: the resolver found no address (retriable);
* ``private_address``: **any** resolved address is not globally routable: loopback, RFC 1918,
  ``fc00::/7``, link-local (``169.254.0.0/16`` with the metadata address, ``fe80::/10``),
  CGNAT ``100.64.0.0/10``, multicast, reserved, unspecified, and the IPv4-mapped / NAT64 /
  6to4 / Teredo forms of those. Literal IPs in decimal, octal or hex (``2130706433``,
  ``0177.0.0.1``, ``0x7f.1``) are normalised first.

Example:
    >>> import asyncio
    >>> async def fake(host, port):
    ...     return ["10.0.0.5"]
    >>> try:
    ...     asyncio.run(vet("https://internal.test/x", TargetPolicy(), resolver=fake))
    ... except WebhookTargetError as err:
    ...     print(err.reason)
    private_address
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from onex_compose.capabilities.webhook._model import WebhookTargetError

__all__ = [
    "Resolver",
    "TargetPolicy",
    "VettedTarget",
    "check_url",
    "is_public_address",
    "normalize_ip",
    "system_resolver",
    "vet",
]

Resolver = Callable[[str, int], Awaitable[Sequence[str]]]
"""``async resolver(host, port) -> [ip, ...]`` (strings)."""

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_NUMERIC_HOST = re.compile(r"^(0x[0-9a-f]*|[0-9]+)(\.(0x[0-9a-f]*|[0-9]+)){0,3}$", re.I)
_CGNAT = ipaddress.ip_network("100.64.0.0/10")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")
_DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True)
class TargetPolicy:
    """Which targets outgoing requests may reach.

    Example:
        >>> TargetPolicy(allowed_hosts=("*.example.com",)).host_allowed("a.example.com")
        True
    """

    allow_http: bool = False
    allow_private_networks: bool = False
    allowed_hosts: tuple[str, ...] = ()
    allowed_ports: tuple[int, ...] | None = None

    @classmethod
    def from_config(cls, config: Any) -> TargetPolicy:
        """From any config with the four fields of the same names."""
        ports = config.allowed_ports
        return cls(bool(config.allow_http), bool(config.allow_private_networks),
                   tuple(h.lower() for h in config.allowed_hosts),
                   None if ports is None else tuple(ports))

    def host_allowed(self, host: str) -> bool:
        """Whether ``host`` matches an ``allowed_hosts`` entry (exact or ``*.suffix``)."""
        host = host.lower().rstrip(".")
        for entry in self.allowed_hosts:
            if entry.startswith("*."):
                if host.endswith(entry[1:]) and len(host) > len(entry) - 1:
                    return True
            elif host == entry:
                return True
        return False


@dataclass(frozen=True)
class VettedTarget:
    """A URL that passed :func:`vet`, pinned to the address that was checked.

    Attributes:
        url: the original URL.
        scheme / host / port: parsed from it (``host`` lower-case, IPv6 without brackets).
        ip: the vetted address the connection must go to.
        pinned_url: ``url`` with the host replaced by ``ip``.
        host_header: the ``Host`` header value (the original host, with a non-default port).
        sni: the TLS server name (the original host), ``None`` for http or an IP literal.
    """

    url: str
    scheme: str
    host: str
    port: int
    ip: str
    pinned_url: str
    host_header: str
    sni: str | None

    def extensions(self) -> dict[str, Any]:
        """httpx request extensions carrying the SNI name (empty without one)."""
        return {"sni_hostname": self.sni} if self.sni else {}


async def system_resolver(host: str, port: int) -> list[str]:
    """The loop's ``getaddrinfo``: every address of ``host`` (TCP), de-duplicated."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    seen: dict[str, None] = {}
    for info in infos:
        seen.setdefault(str(info[4][0]).split("%", 1)[0], None)
    return list(seen)


def normalize_ip(host: str) -> IPAddress | None:
    """The IP a URL host denotes, or ``None`` for a name.

    Accepts IPv6 (bracketed or not, zone ids dropped) and every IPv4 spelling that
    ``inet_aton`` accepts: dotted decimal, decimal (``2130706433``), octal (``0177.0.0.1``),
    hex (``0x7f.0.0.1``) and short forms (``127.1``).

    Example:
        >>> str(normalize_ip("2130706433")), str(normalize_ip("0177.0.0.1")), normalize_ip("a.b")
        ('127.0.0.1', '127.0.0.1', None)
    """
    h = host.strip("[]").split("%", 1)[0]
    if ":" in h:
        try:
            return ipaddress.IPv6Address(h)
        except ValueError:
            return None
    if _NUMERIC_HOST.match(h.rstrip(".")):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(h.rstrip(".")))
        except OSError:
            return None
    return None


def _embedded_v4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip in _NAT64 or ip in _NAT64_LOCAL:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]
    # IPv4-compatible (deprecated) ::a.b.c.d
    if int(ip) >> 32 == 0 and int(ip) > 1:
        return ipaddress.IPv4Address(int(ip))
    return None


def is_public_address(ip: IPAddress | str) -> bool:
    """Whether ``ip`` is globally routable unicast (and so are the IPv4 forms it embeds).

    Example:
        >>> [is_public_address(a) for a in ("8.8.8.8", "100.64.0.1", "::ffff:127.0.0.1", "fe80::1")]
        [True, False, False, False]
    """
    addr = ipaddress.ip_address(ip) if isinstance(ip, str) else ip
    if isinstance(addr, ipaddress.IPv6Address):
        inner = _embedded_v4(addr)
        if inner is not None:
            return is_public_address(inner)
        if addr.is_site_local:
            return False
    elif addr in _CGNAT:
        return False
    return bool(addr.is_global and not (
        addr.is_multicast or addr.is_reserved or addr.is_unspecified or addr.is_loopback
        or addr.is_link_local or addr.is_private))


def check_url(url: str, policy: TargetPolicy) -> tuple[str, str, int, IPAddress | None]:
    """The static checks (no resolution): ``(scheme, host, port, literal ip or None)``.

    Raises:
        WebhookTargetError: ``userinfo``, ``scheme``, ``host_not_allowed``, ``port`` or
            ``private_address`` (a literal IP); ``unresolvable`` for a URL without a host.
    """
    if not isinstance(url, str):
        raise TypeError(f"url must be a string, got {type(url).__name__}")
    try:
        parts = urlsplit(url.strip())
        port_value = parts.port
    except ValueError as exc:
        raise WebhookTargetError(f"not a valid URL ({exc})", reason="unresolvable",
                                 url=url) from None
    scheme = parts.scheme.lower()
    if "@" in parts.netloc:
        raise WebhookTargetError("URLs with userinfo (user:password@) are refused",
                                 reason="userinfo", url=_safe(url))
    if scheme not in ("http", "https") or (scheme == "http" and not policy.allow_http):
        hint = " (set allow_http: true to allow plain http)" if scheme == "http" else ""
        raise WebhookTargetError(f"scheme {scheme or '(none)'!r} is refused: https only{hint}",
                                 reason="scheme", url=url)
    host = (parts.hostname or "").lower().rstrip(".")
    if not host:
        raise WebhookTargetError("the URL has no host", reason="unresolvable", url=url)
    allowed = policy.host_allowed(host)
    if policy.allowed_hosts and not allowed:
        raise WebhookTargetError(f"host {host!r} is not in allowed_hosts", reason="host_not_allowed",
                                 url=url)
    port = port_value if port_value is not None else _DEFAULT_PORTS[scheme]
    if policy.allowed_ports is not None and port not in policy.allowed_ports:
        raise WebhookTargetError(f"port {port} is not in allowed_ports {list(policy.allowed_ports)}",
                                 reason="port", url=url)
    literal = normalize_ip(host)
    if literal is not None:
        _check_addresses([literal], host, url, policy, allowed)
    return scheme, host, port, literal


def _check_addresses(addrs: Iterable[IPAddress], host: str, url: str, policy: TargetPolicy,
                     allowed: bool) -> None:
    if policy.allow_private_networks or allowed:
        return
    for addr in addrs:
        if not is_public_address(addr):
            raise WebhookTargetError(
                f"host {host!r} resolves to {addr}, which is not a public address (set "
                "allow_private_networks or list the host in allowed_hosts to allow it)",
                reason="private_address", url=url)


def _safe(url: str) -> str:
    try:
        parts = urlsplit(url)
    except ValueError:
        return "(unparseable URL)"
    netloc = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit((parts.scheme, "***@" + netloc, parts.path, "", ""))


async def vet(url: str, policy: TargetPolicy, *, resolver: Resolver | None = None) -> VettedTarget:
    """Check ``url`` and resolve it; the target pinned to the first vetted address.

    Every resolved address must pass (a name resolving to one public and one private address
    is refused), so whichever address is used was checked.

    Raises:
        WebhookTargetError: see :func:`check_url`; ``unresolvable`` when resolution fails or
            returns nothing, ``private_address`` when any address is not public.
    """
    scheme, host, port, literal = check_url(url, policy)
    if literal is not None:
        addrs: list[IPAddress] = [literal]
    else:
        try:
            found = await (resolver or system_resolver)(host, port)
        except (OSError, UnicodeError) as exc:
            raise WebhookTargetError(f"host {host!r} could not be resolved ({exc})",
                                     reason="unresolvable", url=url) from None
        addrs = []
        for a in found:
            try:
                addrs.append(ipaddress.ip_address(str(a).split("%", 1)[0]))
            except ValueError:
                raise WebhookTargetError(f"the resolver returned {a!r} for {host!r}, not an IP",
                                         reason="unresolvable", url=url) from None
        if not addrs:
            raise WebhookTargetError(f"host {host!r} has no address", reason="unresolvable",
                                     url=url)
        _check_addresses(addrs, host, url, policy, policy.host_allowed(host))
    ip = addrs[0]
    parts = urlsplit(url.strip())
    ip_text = f"[{ip}]" if ip.version == 6 else str(ip)
    explicit = parts.port is not None and parts.port != _DEFAULT_PORTS[scheme]
    netloc = f"{ip_text}:{port}" if explicit else ip_text
    pinned = urlunsplit((scheme, netloc, parts.path or "/", parts.query, ""))
    shown_host = f"[{host}]" if ":" in host else host
    host_header = f"{shown_host}:{port}" if explicit else shown_host
    sni = host if scheme == "https" and literal is None else None
    return VettedTarget(url, scheme, host, port, str(ip), pinned, host_header, sni)

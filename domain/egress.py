"""Egress policy: which outbound URLs (and resolved addresses) the service may call.

Pure: it parses URLs and judges IP addresses; resolving names is the caller's job (the
runtime adapter resolves right before each call and hands the addresses in). Every
outbound HTTP call of the service (LLM providers today, webhooks later) goes through it.

- Schemes: `http` and `https` only; URLs with user info, backslashes, whitespace or
  control characters are refused (different HTTP stacks parse them differently).
- Always refused unless allow-listed: link-local (169.254/16 with the cloud metadata
  address 169.254.169.254, fe80::/10), unspecified (0.0.0.0, ::), multicast, broadcast and
  reserved ranges, and the metadata host names.
- Private (loopback, RFC 1918, ULA fc00::/7 with fd00:ec2::254, CGNAT 100.64/10 and every
  other non-global range): allowed when `allow_private` (the laptop profile, so local
  models keep working), refused otherwise (production) unless allow-listed.
- IPv4 inside IPv6 (`::ffff:a.b.c.d`, 6to4, Teredo, NAT64 `64:ff9b::/96`) is judged as the
  IPv4 address it carries.
- The allow-list holds CIDRs (`10.0.0.0/8`, `fd00::/8`, `10.1.2.3`) and host names
  (`ollama.internal`, or `*.corp.example` for every subdomain); an allow-listed name lets
  its resolved addresses through whatever they are.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

ALLOWED_SCHEMES = frozenset({"http", "https"})
DEFAULT_RESOLVE_TIMEOUT_SECONDS = 5.0
# Names that mean "this machine" or "the cloud's metadata service" without any lookup.
_INTERNAL_NAMES = frozenset(
    {
        "localhost",
        "localhost.localdomain",
        "ip6-localhost",
        "ip6-loopback",
        "metadata",
        "metadata.google.internal",
        "metadata.goog",
        "instance-data",
        "instance-data.ec2.internal",
    }
)
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
# Refused even when private ranges are allowed: never a legitimate model server.
_ALWAYS_REFUSED = (
    ipaddress.IPv4Network("169.254.0.0/16"),
    ipaddress.IPv6Network("fe80::/10"),
    ipaddress.IPv4Network("0.0.0.0/8"),
    ipaddress.IPv4Network("224.0.0.0/4"),
    ipaddress.IPv4Network("240.0.0.0/4"),  # reserved, with 255.255.255.255
    ipaddress.IPv6Network("::/128"),
    ipaddress.IPv6Network("ff00::/8"),
    ipaddress.IPv6Network("fd00:ec2::254/128"),  # AWS metadata over IPv6
)
_BAD_URL_CHARS = re.compile(r"[\s\\\x00-\x1f\x7f]")
_HOST_RE = re.compile(
    r"^(\*\.)?[a-z0-9_]([a-z0-9_\-]*[a-z0-9_])?(\.[a-z0-9_]([a-z0-9_\-]*[a-z0-9_])?)*$"
)


class EgressRefused(Exception):
    """The policy refuses this URL or address; the message says why (no secrets in it)."""


@dataclass(frozen=True, slots=True)
class EgressTarget:
    scheme: str
    host: str  # lower case, IPv6 without brackets
    port: int


@dataclass(frozen=True, slots=True)
class EgressPolicy:
    allow_private: bool = True
    allow_networks: tuple[IpNetwork, ...] = ()
    allow_hosts: tuple[str, ...] = ()  # exact names, or "*.suffix"
    resolve_timeout_seconds: float = DEFAULT_RESOLVE_TIMEOUT_SECONDS
    schemes: frozenset[str] = field(default=ALLOWED_SCHEMES)

    @classmethod
    def build(
        cls,
        *,
        allow_private: bool,
        allowlist: Iterable[str] = (),
        resolve_timeout_seconds: float = DEFAULT_RESOLVE_TIMEOUT_SECONDS,
    ) -> EgressPolicy:
        """A policy from operator settings; a malformed allow-list entry is a ValueError."""
        networks: list[IpNetwork] = []
        hosts: list[str] = []
        for raw in allowlist:
            entry = raw.strip().lower()
            if not entry:
                continue
            try:
                networks.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
                continue
            except ValueError:
                pass
            if not _HOST_RE.match(entry):
                raise ValueError(f"egress allow-list entry {raw!r} is neither a CIDR nor a host")
            hosts.append(entry)
        return cls(allow_private, tuple(networks), tuple(hosts), resolve_timeout_seconds)

    # -- URLs ----------------------------------------------------------------------------

    def target(self, url: str) -> EgressTarget:
        """Scheme, host and port of a URL the service is about to call, or EgressRefused."""
        if _BAD_URL_CHARS.search(url):
            raise EgressRefused("the URL contains whitespace, control characters or '\\'")
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as exc:
            raise EgressRefused(f"malformed URL: {exc}") from None
        scheme = parts.scheme.lower()
        if scheme not in self.schemes:
            raise EgressRefused(f"scheme {scheme or '(none)'!r} is not allowed (http, https)")
        if "@" in parts.netloc:
            raise EgressRefused("URLs with user info (user@host) are not allowed")
        host = (parts.hostname or "").rstrip(".")
        if not host:
            raise EgressRefused("the URL has no host")
        return EgressTarget(scheme, host, port or (443 if scheme == "https" else 80))

    def host_allowed(self, host: str) -> bool:
        host = host.lower().rstrip(".")
        for entry in self.allow_hosts:
            if entry.startswith("*."):
                if host.endswith(entry[1:]):
                    return True
            elif host == entry:
                return True
        return False

    def check_url(self, url: str) -> EgressTarget:
        """What can be judged without DNS (write time): scheme, user info, literal IP
        addresses (also the forms `inet_aton` accepts, like `2130706433` or `0x7f.1`) and
        internal names such as `localhost` or `metadata.google.internal`."""
        target = self.target(url)
        if self.host_allowed(target.host):
            return target
        literal = literal_address(target.host)
        if literal is not None:
            self.check_addresses(target.host, [literal])
        elif not self.allow_private and (
            target.host in _INTERNAL_NAMES or target.host.endswith(".localhost")
        ):
            raise EgressRefused(
                f"host {target.host!r} is internal; this server does not call private "
                "addresses (CREWGRAPH_EGRESS_ALLOWLIST)"
            )
        elif target.host in _INTERNAL_NAMES and target.host.startswith(("metadata", "instance")):
            raise EgressRefused(f"host {target.host!r} is a cloud metadata service")
        return target

    # -- addresses -----------------------------------------------------------------------

    def refusal(self, address: IpAddress) -> str | None:
        """Why this address may not be called, or None when it may."""
        ip = _effective(address)
        if any(ip in net for net in self.allow_networks) or (
            ip is not address and any(address in net for net in self.allow_networks)
        ):
            return None
        if any(ip.version == net.version and ip in net for net in _ALWAYS_REFUSED):
            return f"{address} is link-local, metadata, multicast, unspecified or reserved"
        if ip.is_global and not ip.is_multicast:
            return None
        if self.allow_private:
            return None
        kind = "loopback" if ip.is_loopback else "private"
        return f"{address} is a {kind} address"

    def check_addresses(self, host: str, addresses: Sequence[IpAddress]) -> None:
        """Refuses when the host is not allow-listed and any of its addresses is refused
        (one bad address is enough: the HTTP stack may pick any of them)."""
        if not addresses:
            raise EgressRefused(f"{host!r} resolved to no address")
        if self.host_allowed(host):
            return
        for address in addresses:
            reason = self.refusal(address)
            if reason is not None:
                hint = "" if self.allow_private else " (CREWGRAPH_EGRESS_ALLOWLIST)"
                raise EgressRefused(f"{host!r}: {reason}{hint}")


def literal_address(host: str) -> IpAddress | None:
    """The IP address a host string denotes by itself (no DNS), or None for a name.

    Besides the canonical forms, the shorthand the C resolver accepts for IPv4
    (`127.1`, `2130706433`, `0x7f.0.0.1`) counts, since HTTP stacks pass it to it."""
    try:
        return ipaddress.ip_address(host.strip("[]").split("%")[0])
    except ValueError:
        pass
    if re.fullmatch(r"[0-9a-fx.]+", host) and re.match(r"^(0x)?[0-9]", host):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    return None


def _effective(address: IpAddress) -> IpAddress:
    """The IPv4 address an IPv6 address carries (mapped, 6to4, Teredo, NAT64), else itself."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return address.ipv4_mapped
        if address.sixtofour is not None:
            return address.sixtofour
        if address.teredo is not None:
            return address.teredo[1]
        if address in _NAT64:
            return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if 1 < int(address) < 2**32:  # IPv4-compatible ::a.b.c.d (deprecated, still routed)
            return ipaddress.IPv4Address(int(address))
    return address

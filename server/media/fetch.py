"""Fetches an image URL without letting a request reach what the server can reach and it cannot.

Every address a host name resolves to is checked (private, loopback, link-local, metadata,
reserved: refused unless listed by address in `allowed_hosts`), and the connection goes to the
checked address itself, so a second DNS answer cannot swap it (DNS rebinding). Redirects are
followed by hand, each one checked the same way. Bodies stop at `max_bytes`, the whole fetch at
`timeout_s`, and the content type must be an image's.
"""

from __future__ import annotations

import http.client
import ipaddress
import socket
import ssl
import time
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

from server.config import MediaSettings

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_CHUNK = 64 * 1024


class FetchRefused(Exception):
    """Why a URL was not fetched (the message completes "the image URL ...")."""


@dataclass(slots=True, frozen=True)
class Fetched:
    body: bytes
    content_type: str


@dataclass(slots=True, frozen=True)
class HostRules:
    names: tuple[str, ...]  # exact host names, or "*.suffix"
    networks: tuple[Network, ...]

    @classmethod
    def parse(cls, entries: tuple[str, ...]) -> HostRules:
        names: list[str] = []
        networks: list[Network] = []
        for entry in entries:
            try:
                networks.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
            except ValueError:
                names.append(entry.lower().rstrip("."))
        return cls(tuple(names), tuple(networks))

    @property
    def empty(self) -> bool:
        return not self.names and not self.networks

    def names_host(self, host: str) -> bool:
        host = host.lower().rstrip(".")
        return any(host == name or (name.startswith("*.") and host.endswith(name[1:])) for name in self.names)

    def holds(self, address: Address) -> bool:
        return any(address in network for network in self.networks)


def is_public(address: Address) -> bool:
    """Globally routable: not private, loopback, link-local (169.254.169.254, the cloud metadata
    address, is one), multicast, reserved or unspecified; IPv4-mapped IPv6 judged as its IPv4."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_global and not address.is_multicast


class SafeFetcher:
    def __init__(self, settings: MediaSettings) -> None:
        self.settings = settings
        self.allowed = HostRules.parse(settings.allowed_hosts)
        self.denied = HostRules.parse(settings.denied_hosts)

    def fetch(self, url: str) -> Fetched:
        """Blocking: call it off the event loop. Raises FetchRefused."""
        if not self.settings.allow_urls:
            raise FetchRefused(
                "is not fetched: this server takes images as data URIs only (server.media.allow_urls)"
            )
        deadline = time.monotonic() + self.settings.timeout_s
        for _ in range(self.settings.max_redirects + 1):
            status, location, fetched = self._get(url, deadline)
            if status not in _REDIRECTS:
                return fetched
            if not location:
                raise FetchRefused(f"answered {status} without a Location")
            url = urljoin(url, location)
        raise FetchRefused(f"redirected more than {self.settings.max_redirects} times")

    def _target(self, url: str) -> tuple[str, str, int, Address, str]:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https"):
            raise FetchRefused(f"has scheme {parts.scheme or 'none'!r}: only http and https are fetched")
        host = parts.hostname
        if not host:
            raise FetchRefused("has no host")
        if parts.username or parts.password:
            raise FetchRefused("carries credentials, which are not sent")
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError as exc:
            raise FetchRefused("has an invalid port") from exc
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        return parts.scheme, host, port, self._address(host, port), path

    def _address(self, host: str, port: int) -> Address:
        """The address to connect to: every address the name resolves to must pass, the first is used."""
        if self.denied.names_host(host):
            raise FetchRefused(f"names host {host!r}, which server.media.denied_hosts refuses")
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError) as exc:
            raise FetchRefused(f"names host {host!r}, which does not resolve") from exc
        addresses = [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]
        if not addresses:
            raise FetchRefused(f"names host {host!r}, which does not resolve")
        named = self.allowed.names_host(host)
        literal = _is_address(host)
        for address in addresses:
            if self.denied.holds(address):
                raise FetchRefused(f"resolves to {address}, which server.media.denied_hosts refuses")
            listed = self.allowed.holds(address)
            if not is_public(address):
                # An address entry unlocks a private address for URLs that name it, or a host
                # listed by name: never for any name that happens to resolve there.
                if not (listed and (literal or named)):
                    raise FetchRefused(
                        f"resolves to {address}, a private, loopback, link-local or reserved address "
                        "(list it by address in server.media.allowed_hosts to allow it)"
                    )
            elif not self.allowed.empty and not (named or listed):
                raise FetchRefused(f"names host {host!r}, which is not in server.media.allowed_hosts")
        return addresses[0]

    def _get(self, url: str, deadline: float) -> tuple[int, str | None, Fetched]:
        scheme, host, port, address, path = self._target(url)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise FetchRefused(f"took longer than {self.settings.timeout_s:g} s")
        conn = _PinnedConnection(scheme, host, port, address, remaining)
        try:
            conn.request("GET", path, headers={"Host": _host_header(host, port, scheme), "Accept": "image/*"})
            response = conn.getresponse()
            if response.status in _REDIRECTS:
                return response.status, response.getheader("Location"), Fetched(b"", "")
            if response.status != 200:
                raise FetchRefused(f"answered HTTP {response.status}")
            content_type = (response.getheader("Content-Type") or "").split(";")[0].strip().lower()
            if not content_type.startswith("image/"):
                raise FetchRefused(f"answered content type {content_type or 'none'!r}, not an image")
            declared = response.getheader("Content-Length")
            if declared and declared.isdigit() and int(declared) > self.settings.max_bytes:
                raise FetchRefused(f"is larger than server.media.max_bytes ({self.settings.max_bytes} bytes)")
            body = bytearray()
            while chunk := response.read(_CHUNK):
                body += chunk
                if len(body) > self.settings.max_bytes:
                    raise FetchRefused(
                        f"is larger than server.media.max_bytes ({self.settings.max_bytes} bytes)"
                    )
                if time.monotonic() > deadline:
                    raise FetchRefused(f"took longer than {self.settings.timeout_s:g} s")
            return 200, None, Fetched(bytes(body), content_type)
        except (OSError, http.client.HTTPException) as exc:
            if time.monotonic() > deadline or isinstance(exc, TimeoutError | socket.timeout):
                raise FetchRefused(f"took longer than {self.settings.timeout_s:g} s") from exc
            raise FetchRefused(f"could not be fetched ({type(exc).__name__}: {exc})") from exc
        finally:
            conn.close()


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def _host_header(host: str, port: int, scheme: str) -> str:
    shown = f"[{host}]" if ":" in host else host
    return shown if port == (443 if scheme == "https" else 80) else f"{shown}:{port}"


class _PinnedConnection(http.client.HTTPConnection):
    """An HTTP(S) connection to an address checked beforehand; TLS still verifies the host name."""

    def __init__(self, scheme: str, host: str, port: int, address: Address, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self._scheme = scheme
        self._address = address

    def connect(self) -> None:
        sock = socket.create_connection((str(self._address), self.port), self.timeout)
        if self._scheme == "https":
            sock = ssl.create_default_context().wrap_socket(sock, server_hostname=self.host)
        self.sock = sock

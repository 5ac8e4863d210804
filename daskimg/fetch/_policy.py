"""What may be fetched, and when to ask again: the refusals and retry rules, no I/O.

* :func:`url_refusal`: a table cell that is not an ``http``/``https`` URL with a host;
* :func:`address_refusal`: an address a connection may not reach (checked by the transfer loop
  on the address each connection really goes to, after DNS);
* :func:`retry_after`: the wait a ``Retry-After`` header asks for, capped;
* :func:`opted_out`: an ``X-Robots-Tag`` that forbids AI use.
"""

from __future__ import annotations

import email.utils
import ipaddress
import re
import time
from urllib.parse import urlsplit

__all__ = ["address_refusal", "opted_out", "retry_after", "url_refusal"]

_MAX_URL = 8192
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")  # C0 controls and DEL


def address_refusal(ip: ipaddress.IPv4Address | ipaddress.IPv6Address, allow_private: bool) -> str | None:
    """Why ``ip`` may not be contacted, or ``None`` when it may."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_link_local:
        return f"{ip} is link-local (cloud metadata lives there); refused always"
    if ip.is_multicast or ip.is_unspecified:
        return f"{ip} is not a unicast address"
    if ip.is_global or allow_private:
        return None
    return f"{ip} is a private or loopback address; pass --allow-private-network to allow it"


def url_refusal(url: object) -> str | None:
    """Why a table cell is not a fetchable URL (surrounding whitespace aside), or ``None``."""
    url = url.strip() if isinstance(url, str) else ""
    if not url:
        return "empty or missing URL"
    if len(url) > _MAX_URL:
        return f"URL longer than {_MAX_URL} characters"
    if "\ufffd" in url:
        return "not valid UTF-8 in the input table"
    if _CONTROL.search(url):
        return "URL contains control characters"
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError as e:
        return f"not a URL: {e}"
    if parts.scheme.lower() not in ("http", "https"):
        return f"scheme {parts.scheme or '(none)'!r} refused; only http and https are fetched"
    if not host:
        return "URL has no host"
    return None


def retry_after(value: str | None, cap: float) -> float | None:
    """Seconds asked by a ``Retry-After`` header (seconds or HTTP date), capped; None if unparsable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return min(float(value), cap)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return min(max(0.0, when.timestamp() - time.time()), cap)


def opted_out(robots: list[str]) -> bool:
    """True when an ``X-Robots-Tag`` value says noai/noimageai to everyone or to daskimg."""
    for value in robots:
        for token in value.split(","):
            agent, _, directive = token.rpartition(":")
            if agent.strip().lower() in ("", "daskimg") and directive.strip().lower() in ("noai", "noimageai"):
                return True
    return False

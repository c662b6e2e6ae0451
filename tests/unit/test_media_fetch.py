"""Image URLs are fetched safely: a loopback test server, allowlisted by address, is served while
every private, loopback, link-local and metadata address is refused, after DNS resolution and
again on each redirect."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from server.config import MediaSettings
from server.media.fetch import FetchRefused, SafeFetcher
from tests import image_origin
from tests.image_origin import PNG


@pytest.fixture(scope="module")
def origin() -> Iterator[str]:
    with image_origin.serving() as url:
        yield url


def fetcher(**settings: object) -> SafeFetcher:
    base: dict[str, object] = {"allowed_hosts": ("127.0.0.1",), "timeout_s": 1.0, "max_bytes": 2048}
    return SafeFetcher(MediaSettings(**{**base, **settings}))  # type: ignore[arg-type]


def test_the_allowlisted_loopback_server_is_served(origin: str) -> None:
    fetched = fetcher().fetch(f"{origin}/cat.png")
    assert fetched.body == PNG and fetched.content_type == "image/png"
    # A redirect to an allowed place is followed.
    assert fetcher().fetch(f"{origin}/redirect?to={origin}/cat.png").body == PNG


@pytest.mark.parametrize(
    "url",
    [
        "http://10.0.0.1/cat.png",
        "http://192.168.1.20/cat.png",
        "http://127.0.0.2/cat.png",  # loopback, not the address listed
        "http://[::1]/cat.png",
        "http://[::ffff:10.0.0.1]/cat.png",  # IPv4-mapped IPv6
        "http://169.254.169.254/latest/meta-data/",  # the cloud metadata address
        "http://0.0.0.0/cat.png",
    ],
)
def test_private_loopback_link_local_and_metadata_addresses_are_refused(url: str) -> None:
    with pytest.raises(FetchRefused, match="private, loopback, link-local or reserved"):
        fetcher().fetch(url)


def test_a_host_name_resolving_to_loopback_is_refused(origin: str) -> None:
    port = origin.rsplit(":", 1)[1]
    with pytest.raises(FetchRefused, match="private, loopback"):
        fetcher().fetch(f"http://localhost:{port}/cat.png")


@pytest.mark.parametrize(
    "target", ["http://10.1.2.3/cat.png", "http://169.254.169.254/", "http://[::1]:80/x.png"]
)
def test_a_redirect_to_a_private_address_is_refused(origin: str, target: str) -> None:
    with pytest.raises(FetchRefused, match="private, loopback"):
        fetcher().fetch(f"{origin}/redirect?to={target}")


def test_without_an_allowlist_even_the_loopback_server_is_refused(origin: str) -> None:
    with pytest.raises(FetchRefused, match="loopback"):
        fetcher(allowed_hosts=()).fetch(f"{origin}/cat.png")


def test_a_denylisted_address_is_refused(origin: str) -> None:
    with pytest.raises(FetchRefused, match="denied_hosts"):
        fetcher(denied_hosts=("127.0.0.0/8",)).fetch(f"{origin}/cat.png")


def test_a_host_outside_the_allowlist_is_refused() -> None:
    with pytest.raises(FetchRefused, match="allowed_hosts"):
        fetcher(allowed_hosts=("images.example.com",)).fetch("http://8.8.8.8/cat.png")


@pytest.mark.parametrize(
    ("path", "why"),
    [("/page.html", "not an image"), ("/big.png", "max_bytes"), ("/slow.png", "longer than")],
)
def test_content_type_size_and_time_are_capped(origin: str, path: str, why: str) -> None:
    with pytest.raises(FetchRefused, match=why):
        fetcher().fetch(f"{origin}{path}")


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("file:///etc/passwd", "only http and https"),
        ("ftp://example.com/x.png", "only http and https"),
        ("http://user:secret@127.0.0.1/x.png", "credentials"),
    ],
)
def test_other_schemes_and_credentials_are_refused(url: str, why: str) -> None:
    with pytest.raises(FetchRefused, match=why):
        fetcher().fetch(url)


def test_too_many_redirects_are_refused(origin: str) -> None:
    url = f"{origin}/cat.png"
    for _ in range(3):
        url = f"{origin}/redirect?to={url}"
    with pytest.raises(FetchRefused, match="redirected more than 2"):
        fetcher(max_redirects=2).fetch(url)


def test_url_fetching_can_be_switched_off(origin: str) -> None:
    with pytest.raises(FetchRefused, match="data URIs only"):
        fetcher(allow_urls=False).fetch(f"{origin}/cat.png")

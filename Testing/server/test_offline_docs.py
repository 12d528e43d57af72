"""Issue 14 item 9: ``/v1/docs`` works on an offline hospital network (no CDN)."""

from __future__ import annotations

import re

from .conftest import LiveServer


def test_swagger_ui_loads_every_asset_from_the_backend(live: LiveServer) -> None:
    page = live.client.get("/v1/docs")
    assert page.status_code == 200 and "SwaggerUIBundle" in page.text
    urls = re.findall(r"""(?:src|href)=['"]([^'"]+)['"]""", page.text)
    assert any(u.endswith(".js") for u in urls) and any(u.endswith(".css") for u in urls), urls
    for url in urls:
        assert url.startswith("/v1/"), f"{url} is not served by the backend (a CDN is unreachable offline)"
        asset = live.client.get(url)
        assert asset.status_code == 200 and len(asset.content) > 0, url
    assert "'/v1/openapi.json'" in page.text or '"/v1/openapi.json"' in page.text
    assert "/v1/docs" not in live.client.get("/v1/openapi.json").json()["paths"]

"""A renamed portal answers 302 to its new domain; the client must repeat the POST there.

httpx would follow a 302 with a GET (dropping the body that carries the token and parameters), so
the client re-POSTs itself (facts §1.1). The emulator has no rename, so this one test swaps in an
httpx transport that plays the two domains.
"""

from __future__ import annotations

import httpx
import orjson

from connectors.bitrix24 import Bitrix24Client, WebhookCredentials


def test_a_renamed_portal_gets_the_same_post_at_its_new_address() -> None:
    seen: list[tuple[str, str, bytes]] = []

    def portals(request: httpx.Request) -> httpx.Response:
        seen.append((request.method, str(request.url), request.content))
        if request.url.host == "old.bitrix24.com":
            return httpx.Response(302, headers={"location": "https://new.bitrix24.com/rest/1/hookcode123/app.info"})
        return httpx.Response(200, content=orjson.dumps({"result": {"renamed": True}, "time": {}}))

    client = Bitrix24Client(WebhookCredentials("https://old.bitrix24.com/rest/1/hookcode123/"),
                            transport=httpx.MockTransport(portals))
    assert client.call("app.info", {"x": 1}).result == {"renamed": True}
    assert [(method, url) for method, url, _ in seen] == [
        ("POST", "https://old.bitrix24.com/rest/1/hookcode123/app.info"),
        ("POST", "https://new.bitrix24.com/rest/1/hookcode123/app.info")]
    assert seen[0][2] == seen[1][2] == b'{"x":1}'

"""``GET /docs``: Swagger UI for the OpenAPI document, only with the ``docs`` setting.

Off by default: the page runs third-party code (Swagger UI, from the jsDelivr CDN) in the
server's origin, next to an API that may take a key. When on, the page pins one version of
Swagger UI with Subresource Integrity hashes (a changed file on the CDN is refused by the
browser, not run) and carries a Content-Security-Policy that allows only what it needs:

- scripts: the pinned bundle from cdn.jsdelivr.net and the page's own inline start-up
  script, by its hash; nothing else, no ``eval``;
- styles: the pinned stylesheet only (Swagger UI sets its run-time styles through the DOM,
  which a policy does not restrict; no ``'unsafe-inline'``: tests/browser/test_docs_page.py
  opens every operation and runs one without a violation); images: this origin and
  ``data:`` (its icons);
- connections: this origin only (``/openapi.json`` and "Try it out"); no frames, forms or
  ``<base>``, and the page cannot be framed.

``/openapi.json`` is served either way (an API document, not a page).
"""

from __future__ import annotations

import base64
import hashlib

from fastapi import APIRouter, Response

SWAGGER_UI = "https://cdn.jsdelivr.net/npm/swagger-ui-dist@5.31.0"
# sha384 of the files npm's swagger-ui-dist 5.31.0 ships (what jsDelivr serves, byte for byte).
_JS_SRI = "sha384-cxafBeQ+zYROeFafGFxtFbnp1ICqeS9mG7+f0WWSHzhnrUvwg9Za5CCw6wgrHA7K"
_CSS_SRI = "sha384-KX9Rx9vM1AmUNAn07bPAiZhFD4C8jdNgG6f5MRNvR+EfAxs2PmMFtUUazui7ryZQ"
_START = (
    'SwaggerUIBundle({url: "/openapi.json", dom_id: "#swagger-ui", deepLinking: true, '
    "validatorUrl: null, presets: [SwaggerUIBundle.presets.apis]});"
)
_PAGE = f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>resnet-server API</title>
<link rel="stylesheet" href="{SWAGGER_UI}/swagger-ui.css" integrity="{_CSS_SRI}" crossorigin="anonymous">
</head>
<body>
<div id="swagger-ui"></div>
<script src="{SWAGGER_UI}/swagger-ui-bundle.js" integrity="{_JS_SRI}" crossorigin="anonymous"></script>
<script>{_START}</script>
</body>
</html>
"""


def content_security_policy() -> str:
    """The page's policy (module docstring); the start-up script is allowed by its sha256."""
    start = base64.b64encode(hashlib.sha256(_START.encode()).digest()).decode()
    return (
        f"default-src 'none'; script-src https://cdn.jsdelivr.net 'sha256-{start}'; "
        "style-src https://cdn.jsdelivr.net; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )


def router() -> APIRouter:
    """The ``/docs`` route (built only when the setting is on)."""
    headers = {
        "Content-Security-Policy": content_security_policy(),
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-cache",
    }
    docs = APIRouter(tags=["docs"])

    @docs.get("/docs", include_in_schema=False)
    async def page() -> Response:
        return Response(_PAGE, media_type="text/html; charset=utf-8", headers=headers)

    return docs

"""Heroku Managed Inference: the API of api.md (JSON in, `data[0].b64_json` out).

The default provider: every fact of the base class is its own. A prefix names it with
`{PREFIX}_PROVIDER=heroku`, or by naming no other provider; its key is `{PREFIX}_KEY` and
its URL `{PREFIX}_URL` (both from `heroku config:get`), without which the embedded server
is used. It paces itself from the `x-ratelimit-*` headers it sends.
"""

from __future__ import annotations

from .base import Provider


class Heroku(Provider):
    """Heroku Managed Inference's `/v1/images/generations`."""

    name = "heroku"
    url_tails = ("/v1/images/generations", "/v1")


HEROKU = Heroku()

"""Amazon Bedrock: `InvokeModel` on bedrock-runtime, for teams on AWS.

`POST https://bedrock-runtime.{region}.amazonaws.com/model/{modelId}/invoke` with a JSON
body (`prompt`, `negative_prompt`, `aspect_ratio`, `seed`, `output_format`; image-to-image:
`image` as base64 and `strength`), answered with `{"images", "seeds", "finish_reasons"}`.
Authenticated with a Bedrock API key (`AWS_BEARER_TOKEN_BEDROCK`, or `{PREFIX}_KEY`) sent as
a bearer token, else by SigV4 signing (service `bedrock`) with the standard AWS credential
chain, through botocore (the optional extra `imagebatch[bedrock]`). Errors are AWS's: the
`x-amzn-ErrorType` header and the JSON `message`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import threading
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from ..errors import (
    ApiError,
    AuthError,
    ConfigError,
    PermanentApiError,
    RetryableApiError,
    printable,
)
from ..planning import apispec
from ..planning.plan import Job
from .base import Answer, Outgoing, Provider, json_doc, seed_of
from .stability import aspect_problem

#: Bedrock's API key, sent as a bearer token when set (no signing, no botocore).
TOKEN_VARIABLE = "AWS_BEARER_TOKEN_BEDROCK"
#: What signs a request when there is no token: the standard AWS credential chain.
CHAIN = "the AWS credentials (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE)"
#: Variables any of which says "send to AWS" for a Bedrock prefix without a URL.
AWS_VARIABLES = (TOKEN_VARIABLE, "AWS_ACCESS_KEY_ID", "AWS_PROFILE", "AWS_REGION",
                 "AWS_DEFAULT_REGION", "AWS_WEB_IDENTITY_TOKEN_FILE",
                 "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI")
DEFAULT_REGION = "us-west-2"  # a region that hosts Stable Image Ultra
SERVICE = "bedrock"  # SigV4's service name for bedrock-runtime
#: The model names imagebatch's manifests use, as Bedrock's model ids; a model id with a
#: dot (`stability.sd3-5-large-v1:0`) is sent as it is.
MODEL_IDS = {"stable-image-ultra": "stability.stable-image-ultra-v1:1",
             "stable-image-core": "stability.stable-image-core-v1:1"}
#: Requests a minute when --rpm does not say: Bedrock's quotas are per account, region and
#: model, and low by default for image models; raise --rpm to the account's quota.
DEFAULT_RPM = 10
#: The pause after a 429 (ThrottlingException) that says no Retry-After, and after a
#: ServiceQuotaExceededException (the quota is counted a minute at a time).
THROTTLE_PAUSE = 10.0
QUOTA_PAUSE = 60.0
#: Request fields sent in the body (the key body's `provider` and `model` are not).
SENT = ("prompt", "negative_prompt", "aspect_ratio", "seed", "output_format", "image",
        "strength")
#: AWS error types that are worth a retry, whatever their status.
RETRYABLE = frozenset({"ModelTimeoutException", "ThrottlingException",
                       "ServiceQuotaExceededException", "ModelNotReadyException",
                       "InternalServerException", "ServiceUnavailableException"})


def model_id(model: str) -> str:
    """Bedrock's id of a model: MODEL_IDS', or the model itself when it is an id."""
    return MODEL_IDS.get(model, model)


def region_of(base_url: str) -> str:
    """The region of a bedrock-runtime URL (`bedrock-runtime.REGION.amazonaws.com`, or a
    VPC endpoint's `...bedrock-runtime.REGION.vpce.amazonaws.com`); else AWS_REGION, else
    us-west-2 (the embedded server, a proxy)."""
    labels = (urlsplit(base_url).hostname or "").lower().split(".")
    if "bedrock-runtime" in labels:
        at = labels.index("bedrock-runtime")
        if at + 1 < len(labels) and labels[at + 1] not in ("amazonaws", "vpce"):
            return labels[at + 1]
    return (os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
            or DEFAULT_REGION).strip()


class Bedrock(Provider):
    """Amazon Bedrock's InvokeModel for Stability's image models."""

    name = "bedrock"
    fields = frozenset({"prompt", "negative_prompt", "aspect_ratio", "output_format", "seed",
                        "image", "strength"})
    output_formats = ("png", "jpeg")
    max_seed = apispec.MAX_SEED
    endpoint = "/model/{modelId}/invoke"
    url_tails = ()
    hosts = ()
    key_variables = (TOKEN_VARIABLE,)

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._chain: Any = None  # botocore's credentials, resolved on first use

    # -- the environment ------------------------------------------------------------------

    def claims_url(self, url: str) -> bool:
        """A URL on bedrock-runtime.*.amazonaws.com (a VPC endpoint's included)."""
        try:
            host = (urlsplit(url).hostname or "").lower()
        except ValueError:
            return False
        return host.endswith(".amazonaws.com") and "bedrock-runtime" in host.split(".")

    def default_url(self, env: Mapping[str, str], prefix: str, key: str) -> str:
        """The region's bedrock-runtime once the environment names AWS (a key, a token, a
        credential or region variable); the embedded server otherwise."""
        region = (env.get(f"{prefix}_REGION") or "").strip()
        if not (key or region or any((env.get(n) or "").strip() for n in AWS_VARIABLES)):
            return ""
        region = region or (env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION")
                            or DEFAULT_REGION).strip()
        return f"https://bedrock-runtime.{region}.amazonaws.com"

    def key_of(self, env: Mapping[str, str], prefix: str) -> tuple[str, str | None]:
        """`{prefix}_KEY` or AWS_BEARER_TOKEN_BEDROCK (a bearer token); without either,
        no key: requests are signed with the AWS credential chain."""
        key, name = super().key_of(env, prefix)
        return (key, name) if key else ("", CHAIN)

    def needs_key(self, env: Mapping[str, str], prefix: str) -> bool:
        """A token is needed only where botocore, which signs without one, is missing."""
        try:
            import botocore  # noqa: F401, PLC0415
        except ImportError:
            return True
        return False

    def how_key(self, prefix: str) -> str:
        """How a user gives Bedrock a key or credentials."""
        return (f"export {TOKEN_VARIABLE}=... (a Bedrock API key), or install "
                "imagebatch[bedrock] and set AWS credentials (AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY, or AWS_PROFILE)")

    def how_url(self, prefix: str) -> str:
        """How a user points a prefix at Bedrock."""
        return (f"export {prefix}_PROVIDER=bedrock {prefix}_REGION={DEFAULT_REGION} "
                f"(or {prefix}_URL=https://bedrock-runtime.{DEFAULT_REGION}.amazonaws.com)")

    def check_model(self, prefix: str, model: str) -> None:
        """A model Bedrock can be asked for: one of MODEL_IDS, or a Bedrock model id."""
        if model not in MODEL_IDS and "." not in model:
            raise ConfigError(f"{prefix}_MODEL_ID is {model[:60]!r}: Bedrock serves "
                              f"{', '.join(MODEL_IDS)} (or give a Bedrock model id, e.g. "
                              f"{MODEL_IDS[apispec.DEFAULT_MODEL]})")

    # -- the request ----------------------------------------------------------------------

    def key_body(self, request: dict[str, Any]) -> dict[str, Any]:
        """The JSON body's fields plus `provider` (so its keys differ from Heroku's and
        Stability's) and `model`; an input image by its SHA-256."""
        return {**request, "provider": self.name}

    def body(self, job: Job) -> bytes:
        """The JSON sent: the request's fields without `provider` and `model` (the URL names
        the model), the input image read now as base64 (refused if it changed)."""
        request = job.request
        sent = {k: request[k] for k in SENT if request.get(k) is not None}
        sent.setdefault("output_format", apispec.DEFAULT_FORMAT)
        if request.get("image"):
            if job.image is None:
                raise PermanentApiError("image-to-image job without its input image file",
                                        kind="input_image")
            try:
                with open(job.image, "rb") as fh:
                    data = fh.read()
            except OSError as exc:
                raise PermanentApiError(f"cannot read the input image {job.image}: "
                                        f"{exc.strerror or exc}", kind="input_image") from None
            if "sha256:" + hashlib.sha256(data).hexdigest() != request["image"]:
                raise PermanentApiError(f"the input image {job.image} changed since the plan "
                                        "was made; run again to plan it anew",
                                        kind="input_image")
            sent["image"] = base64.b64encode(data).decode("ascii")
        return json.dumps(sent, sort_keys=True, separators=(",", ":"),
                          ensure_ascii=False).encode("utf-8")

    def request_blocks(self, job: Job, key: str) -> bool:
        """An input image to read, or (with no API key) the AWS credential chain, which may
        read files or ask the instance metadata service."""
        return job.image is not None or not key

    def request(self, job: Job, base_url: str, key: str, accept: str) -> Outgoing:
        """The invoke request: a bearer token when there is a key, else SigV4-signed."""
        url = f"{base_url}/model/{model_id(str(job.request.get('model') or ''))}/invoke"
        body = self.body(job)
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if key:
            return Outgoing(url, body, {**headers, "Authorization": f"Bearer {key}"})
        return Outgoing(url, body, self.sign(url, body, headers, region_of(base_url)))

    def credentials(self) -> Any:
        """The AWS credential chain's credentials (botocore), resolved once; AuthError when
        botocore is missing or the chain finds none."""
        with self._lock:
            if self._chain is None:
                try:
                    import botocore.session  # noqa: PLC0415
                except ImportError:
                    raise AuthError(f"no {TOKEN_VARIABLE}, and signing with AWS credentials "
                                    "needs botocore: pip install 'imagebatch[bedrock]'",
                                    kind="auth") from None
                self._chain = botocore.session.get_session().get_credentials()
            if self._chain is None:
                raise AuthError(f"no AWS credentials found: {self.how_key('')}", kind="auth")
            return self._chain.get_frozen_credentials()

    def sign(self, url: str, body: bytes, headers: dict[str, str],
             region: str) -> dict[str, str]:
        """`headers` with SigV4's (Authorization, X-Amz-Date, X-Amz-Security-Token) for
        this exact URL and body, by botocore's signer."""
        from botocore.auth import SigV4Auth  # noqa: PLC0415
        from botocore.awsrequest import AWSRequest  # noqa: PLC0415

        signed = AWSRequest(method="POST", url=url, data=body, headers=dict(headers))
        SigV4Auth(self.credentials(), SERVICE, region).add_auth(signed)
        return {k: str(v) for k, v in signed.headers.items()}

    def secrets(self, key: str) -> tuple[str, ...]:
        """The token, or the signing credentials' secret parts."""
        found = [key] if key else []
        chain = self._chain
        if chain is not None:
            try:
                frozen = chain.get_frozen_credentials()
            except Exception:  # noqa: BLE001 - scrubbing must never fail
                frozen = None
            if frozen is not None:
                found += [s for s in (frozen.access_key, frozen.secret_key, frozen.token) if s]
        return tuple(found)

    # -- the answer -----------------------------------------------------------------------

    def answer(self, raw: bytes, content_type: str, headers: Mapping[str, str]) -> Answer:
        """`{"images": [b64], "seeds": [n], "finish_reasons": [null]}`; a non-null reason
        means no usable image: a filter's is final, another retried."""
        doc = json_doc(raw)
        if not isinstance(doc, dict):
            raise RetryableApiError("unexpected response format", status=200, kind="format")
        reasons = doc.get("finish_reasons")
        reason = reasons[0] if isinstance(reasons, list) and reasons else None
        if reason is not None:
            text = printable(str(reason))[:200]
            if text.lower().startswith("filter reason"):
                raise PermanentApiError(
                    f"content filtered: the provider's moderation withheld this image "
                    f"({text}); change the prompt, or the seed", status=200,
                    kind="content_filtered")
            raise RetryableApiError(f"finish reason {text}", status=200, kind="finish_reason")
        images = doc.get("images")
        image = images[0] if isinstance(images, list) and images else None
        if not isinstance(image, str) or not image:
            raise RetryableApiError("unexpected response format (no image)", status=200,
                                    kind="format")
        seeds = doc.get("seeds")
        return Answer(b64=image, seed=seed_of(seeds[0]) if isinstance(seeds, list) and seeds
                      else None)

    def size_problem(self, width: int, height: int, request: Mapping[str, Any]) -> str | None:
        """By shape, as Stability's own API: about one megapixel at the ratio asked."""
        return aspect_problem(width, height, request)

    # -- statuses -------------------------------------------------------------------------

    def pacing_headers(self, headers: Mapping[str, str], status: int) -> Mapping[str, str]:
        """A throttled answer without Retry-After pauses the member THROTTLE_PAUSE (a quota
        exceeded QUOTA_PAUSE), so that the pacer waits as the retry does."""
        kind = error_type(headers)
        if headers.get("Retry-After") is not None or not (
                status == 429 or kind == "ServiceQuotaExceededException"):
            return headers
        from multidict import CIMultiDict  # noqa: PLC0415 - only on a 429: aiohttp's, loaded by then

        out = CIMultiDict(headers)
        out["Retry-After"] = f"{self._pause(kind):g}"
        return out

    @staticmethod
    def _pause(kind: str) -> float:
        return QUOTA_PAUSE if kind == "ServiceQuotaExceededException" else THROTTLE_PAUSE

    def status_error(self, status: int, raw: bytes, headers: Mapping[str, str],
                     key_variable: str, retry_after: float | None) -> ApiError:
        """AWS's error types: AccessDenied is the key's problem (the run stops, a pool drops
        the member), Validation and ResourceNotFound the job's for good, throttling, quotas,
        timeouts, a model not ready and server errors retried."""
        kind = error_type(headers)
        message = self.error_message(raw, headers)
        said = f"{kind or status}" + (f": {message}" if message else "")
        if status in (401, 403) or kind in ("AccessDeniedException",
                                            "UnrecognizedClientException"):
            return AuthError(f"the service refused the credentials ({status} {said}): check "
                             f"{key_variable}, and that the account has access to the model "
                             "in this region", status=status, kind="auth")
        if kind in RETRYABLE or status in (408, 429) or status >= 500:
            if retry_after is None and (status == 429 or kind == "ServiceQuotaExceededException"):
                retry_after = self._pause(kind)
            return RetryableApiError(f"HTTP {status} {said}", status=status, kind="http",
                                     retry_after=retry_after)
        return PermanentApiError(f"{said}", status=status, kind="permanent")

    # -- pacing ---------------------------------------------------------------------------

    def pace(self, asked: float | None, default: float | None, auto: bool,
             local: bool) -> tuple[float | None, bool]:
        """--rpm when given (the account's quota), else DEFAULT_RPM; the embedded server is
        paced only when asked."""
        if asked is not None:
            return asked or None, False
        if local:
            return None, False
        return float(DEFAULT_RPM), False


def error_type(headers: Mapping[str, str]) -> str:
    """AWS's error type from `x-amzn-ErrorType` (`ThrottlingException:http://...` -> the
    name alone), or ""."""
    value = headers.get("x-amzn-ErrorType") or ""
    return printable(value.split(":", 1)[0].strip())[:80]


BEDROCK = Bedrock()

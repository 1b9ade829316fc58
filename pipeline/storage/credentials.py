"""Content Credentials (C2PA): signing what imagebatch writes, and reading what an image carries.

The AI marker (XMP DigitalSourceType, `metadata.py`) is always written. A signed C2PA
manifest is added when the team has a certificate: `IMAGEBATCH_C2PA_CERT` and
`IMAGEBATCH_C2PA_KEY` (each a path to a PEM file, or the PEM itself), optional
`IMAGEBATCH_C2PA_TSA_URL`, and `IMAGEBATCH_C2PA_PROMPT=1` to put the prompt in the manifest
(by default only the job key: prompts can be confidential). Signing needs the optional
extra `imagebatch[c2pa]` (the `c2pa-python` library); without it a run or export that asks
for signing stops before it sends or writes anything.

A manifest is bound to the file's exact bytes, so signing is always the last step: encode,
embed the request and the marker, then sign. An image that arrives already signed (by its
provider) is never rewritten: `Store.save` keeps it byte for byte with its request beside it.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from . import metadata

ENV_CERT = "IMAGEBATCH_C2PA_CERT"
ENV_KEY = "IMAGEBATCH_C2PA_KEY"
ENV_TSA = "IMAGEBATCH_C2PA_TSA_URL"
ENV_PROMPT = "IMAGEBATCH_C2PA_PROMPT"
INSTALL_HINT = "pip install 'imagebatch[c2pa]'"
#: The custom assertion naming the job (and, when asked, the prompt) in an original's manifest.
JOB_ASSERTION = "org.imagebatch.job"
MIME = {"png": "image/png", "jpeg": "image/jpeg", "jpg": "image/jpeg", "webp": "image/webp",
        "avif": "image/avif"}

#: Credential states, as results.jsonl, assets.json and `show --credentials` give them.
TRUSTED = "trusted"  # intact, and the signer chains to a trust list the validator knows
VALID = "valid"  # intact; the signer is not on a trust list (a self-issued certificate)
INVALID = "invalid"  # the file changed since it was signed, or the manifest is broken
UNCHECKED = "unchecked"  # a manifest is there, but c2pa-python is not installed to check it
# The one failure a self-issued certificate gives: integrity is intact, trust is not known.
_UNTRUSTED = "signingCredential.untrusted"


@dataclass(frozen=True)
class SignerConfig:
    """The team's signing identity: picklable (export workers get it); never printed."""

    alg: str  # es256 | es384 | es512 | ps256 | ed25519
    certs: bytes = field(repr=False)  # the PEM chain, leaf first
    key: bytes = field(repr=False)  # the private key's PEM
    tsa_url: str | None = None
    prompt: bool = False  # put the prompt in an original's manifest

    @property
    def tag(self) -> str:
        """A short digest of the certificate chain: what export fingerprints compare."""
        return hashlib.sha256(self.certs).hexdigest()[:16]


def _pem(value: str, variable: str) -> bytes:
    """A variable's PEM: the value itself when it is one, else the file it names."""
    if "-----BEGIN" in value:
        return value.encode()
    try:
        return Path(value).expanduser().read_bytes()
    except OSError as exc:
        # the value is a path here, never the secret itself
        raise ConfigError(f"{variable}: cannot read {value}: {exc.strerror or exc}") from None


def library_available() -> bool:
    """Whether c2pa-python (the `c2pa` module) can be imported."""
    try:
        import c2pa  # noqa: F401
    except ImportError:
        return False
    return True


def signer_from_env(env: Mapping[str, str] | None = None) -> SignerConfig | None:
    """The signing identity the environment gives, or None when it asks for no signing.

    ConfigError (exit 2, before anything is sent) when only one of the two variables is set,
    a PEM cannot be read, the key is of a kind C2PA cannot sign with, or c2pa-python is not
    installed. No message ever holds a key or a certificate.
    """
    env = os.environ if env is None else env
    cert_value, key_value = env.get(ENV_CERT, ""), env.get(ENV_KEY, "")
    if not cert_value and not key_value:
        return None
    if not cert_value or not key_value:
        missing = ENV_CERT if not cert_value else ENV_KEY
        raise ConfigError(f"{missing} is not set: signing Content Credentials needs both "
                          f"{ENV_CERT} and {ENV_KEY}")
    if not library_available():
        raise ConfigError(f"{ENV_CERT} and {ENV_KEY} ask for signed Content Credentials, "
                          f"which need the c2pa extra: {INSTALL_HINT}")
    certs, key = _pem(cert_value, ENV_CERT), _pem(key_value, ENV_KEY)
    tsa = env.get(ENV_TSA) or None
    if tsa is not None and not tsa.startswith(("http://", "https://")):
        raise ConfigError(f"{ENV_TSA} must be an http:// or https:// URL")
    return SignerConfig(_algorithm(key), certs, key, tsa,
                        prompt=env.get(ENV_PROMPT, "") not in ("", "0"))


def _algorithm(key_pem: bytes) -> str:
    """The C2PA signing algorithm for a private key: its kind (and curve) decide it."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError):
        # the reason cryptography gives can quote the input: name the variable only
        raise ConfigError(f"{ENV_KEY} is not an unencrypted PEM private key") from None
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return "ed25519"
    if isinstance(key, rsa.RSAPrivateKey):
        return "ps256"
    if isinstance(key, ec.EllipticCurvePrivateKey):
        by_curve = {"secp256r1": "es256", "secp384r1": "es384", "secp521r1": "es512"}
        if key.curve.name in by_curve:
            return by_curve[key.curve.name]
    raise ConfigError(f"{ENV_KEY}: C2PA signs with EC P-256/P-384/P-521, RSA (PSS) or "
                      "Ed25519 keys; this key is of another kind")


# ---- signing ---------------------------------------------------------------------------------

def _mime(fmt: str) -> str:
    try:
        return MIME[fmt]
    except KeyError:
        raise ValueError(f"cannot sign a {fmt!r} image") from None


def _generator() -> list[dict[str, str]]:
    from .. import __version__

    return [{"name": "imagebatch", "version": __version__}]


def sign(data: bytes, fmt: str, signer: SignerConfig, manifest: dict[str, Any], *,
         parent: tuple[bytes, str, str] | None = None, thumbnail: bool = True) -> bytes:
    """`data` (a `fmt` image) with a signed C2PA manifest built from `manifest`; `parent`
    (bytes, format, title) becomes its `parentOf` ingredient, labelled "parent"."""
    import c2pa

    settings = c2pa.Settings.from_dict({"builder": {"thumbnail": {"enabled": thumbnail}}})
    context = c2pa.Context(settings)
    info = c2pa.C2paSignerInfo(signer.alg.encode(), signer.certs, signer.key,
                               signer.tsa_url.encode() if signer.tsa_url else None)
    c2pa_signer = c2pa.Signer.from_info(info)
    out = io.BytesIO()
    with c2pa.Builder(manifest, context=context) as builder:
        if parent is not None:
            blob, parent_fmt, title = parent
            builder.add_ingredient({"title": title, "relationship": "parentOf",
                                    "label": "parent"}, _mime(parent_fmt), io.BytesIO(blob))
        builder.sign(c2pa_signer, _mime(fmt), io.BytesIO(data), out)
    return out.getvalue()


def original_manifest(title: str, job_key: str, agent: str, prompt: str | None) -> dict[str, Any]:
    """The manifest of a generated image: created by a trained model (`agent`), the job."""
    job: dict[str, Any] = {"key": job_key}
    if prompt is not None:
        job["prompt"] = prompt
    return {
        "claim_generator_info": _generator(),
        "title": title,
        "assertions": [
            {"label": "c2pa.actions", "data": {"actions": [{
                "action": "c2pa.created",
                "digitalSourceType": metadata.TRAINED_ALGORITHMIC_MEDIA,
                "softwareAgent": {"name": agent},
            }]}},
            {"label": JOB_ASSERTION, "data": job},
        ],
    }


def sign_original(data: bytes, fmt: str, signer: SignerConfig, *, title: str, job_key: str,
                  agent: str, prompt: str | None) -> bytes:
    """An original (request and marker already embedded) signed as made by `agent` (the
    model and provider); the prompt goes in only when the signer asks for it."""
    manifest = original_manifest(title, job_key, agent, prompt if signer.prompt else None)
    return sign(data, fmt, signer, manifest)


def sign_export(data: bytes, fmt: str, signer: SignerConfig, *, title: str,
                parent: tuple[bytes, str, str], actions: Sequence[str],
                thumbnail: bool = False) -> bytes:
    """An exported file signed with the original as its parent ingredient: opened, then
    `actions` (c2pa.cropped, c2pa.resized, c2pa.transcoded, ...). No thumbnails by default:
    the file and its parent's would add about 120 KB to a web asset of a few KB (see
    `make bench`), and the file itself is the picture a viewer shows."""
    steps: list[dict[str, Any]] = [
        {"action": "c2pa.opened", "parameters": {"ingredientIds": ["parent"]}}]
    steps += [{"action": a} for a in actions]
    manifest = {"claim_generator_info": _generator(), "title": title,
                "assertions": [{"label": "c2pa.actions", "data": {"actions": steps}}]}
    return sign(data, fmt, signer, manifest, parent=parent, thumbnail=thumbnail)


def sign_image(data: bytes, fmt: str, signer: SignerConfig,
               agent: str = "imagebatch embedded server") -> bytes:
    """`data` signed as a provider signs what it serves (c2pa.created, trained model): what
    the embedded server does for `--sign` so provider-signed images are rehearsed offline."""
    manifest = {
        "claim_generator_info": [{"name": agent}],
        "title": f"image.{fmt}",
        "assertions": [{"label": "c2pa.actions", "data": {"actions": [{
            "action": "c2pa.created",
            "digitalSourceType": metadata.TRAINED_ALGORITHMIC_MEDIA,
            "softwareAgent": {"name": agent},
        }]}}],
    }
    return sign(data, fmt, signer, manifest)


# ---- reading ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Credential:
    """What an image's C2PA manifest says, and whether it validates."""

    state: str  # TRUSTED | VALID | INVALID | UNCHECKED
    failures: tuple[str, ...] = ()  # validation codes, signingCredential.untrusted included
    signer: str | None = None  # the certificate's common name and issuer
    generator: str | None = None
    actions: tuple[str, ...] = ()
    ingredients: tuple[dict[str, Any], ...] = ()  # title, relationship, its own state

    @property
    def intact(self) -> bool:
        """The file is the one that was signed (trusted or not)."""
        return self.state in (TRUSTED, VALID)

    def as_dict(self) -> dict[str, Any]:
        """As `show --credentials` prints it."""
        return {"state": self.state, "failures": list(self.failures), "signer": self.signer,
                "generator": self.generator, "actions": list(self.actions),
                "ingredients": list(self.ingredients)}


def has_manifest(data: bytes) -> bool:
    """Whether the bytes carry a C2PA manifest store (a JUMBF box labelled c2pa), looked for
    without the library: what keeps a provider's credential intact even without the extra."""
    return b"jumb" in data and b"c2pa" in data


def read(data: bytes) -> Credential | None:
    """The credential of an image, None when it has none; UNCHECKED when one is there but
    c2pa-python is not installed to validate it."""
    if not has_manifest(data):
        return None
    try:
        fmt = metadata.format_of(data)
    except metadata.MetadataError:
        return None
    try:
        import c2pa
    except ImportError:
        return Credential(UNCHECKED)
    try:
        reader = c2pa.Reader.try_create(_mime(fmt), io.BytesIO(data))
    except c2pa.C2paError as exc:
        return Credential(INVALID, failures=(f"unreadable: {exc}",))
    if reader is None:
        return None
    with reader:
        manifest = reader.get_active_manifest() or {}
        results = reader.get_validation_results() or {}
        state = (reader.get_validation_state() or "").lower()
    failures = tuple(str(f.get("code")) for f in
                     (results.get("activeManifest") or {}).get("failure") or [])
    failures += tuple(str(f.get("code")) for f in
                      (results.get("ingredientDeltas") or []) for f in
                      ((f.get("validationDeltas") or {}).get("failure") or []))
    if state == "trusted":
        verdict = TRUSTED
    elif state == "valid" and set(failures) <= {_UNTRUSTED}:
        verdict = VALID
    else:
        verdict = INVALID
    sig = manifest.get("signature_info") or {}
    who = ", ".join(str(v) for v in (sig.get("common_name"), sig.get("issuer")) if v) or None
    gen = manifest.get("claim_generator_info") or []
    generator = ", ".join(" ".join(str(g.get(k)) for k in ("name", "version") if g.get(k))
                          for g in gen if isinstance(g, dict)) or None
    actions: list[str] = []
    for assertion in manifest.get("assertions") or []:
        if str(assertion.get("label", "")).startswith("c2pa.actions"):
            actions += [str(a.get("action")) for a in
                        (assertion.get("data") or {}).get("actions") or []]
    ingredients = tuple(
        {"title": ing.get("title"), "relationship": ing.get("relationship"),
         "format": ing.get("format"), "signed": ing.get("active_manifest") is not None}
        for ing in manifest.get("ingredients") or [])
    return Credential(verdict, failures, who, generator, tuple(actions), ingredients)


def provenance(path: Path) -> dict[str, Any]:
    """What `show --credentials` prints: the AI marker, the credential, the request."""
    data = Path(path).read_bytes()
    cred = read(data)
    try:
        request: Any = metadata.read_request(path)
    except metadata.MetadataError:
        request = None
    return {
        "digital_source_type": metadata.source_type(data),
        "content_credentials": None if cred is None else cred.as_dict(),
        "request": request,
    }


def check_file(data: bytes, *, signed: bool) -> str | None:
    """Why a finished file would not pass a release check, or None: it must carry the AI
    marker, and a credential that validates (required when `signed`)."""
    try:
        marker = metadata.source_type(data)
    except metadata.MetadataError as exc:
        return str(exc)
    if marker != metadata.TRAINED_ALGORITHMIC_MEDIA:
        return "carries no AI marker (XMP Iptc4xmpExt:DigitalSourceType)"
    cred = read(data)
    if cred is None:
        return "carries no Content Credentials" if signed else None
    if cred.state == UNCHECKED:
        return f"its Content Credentials cannot be checked without the c2pa extra: {INSTALL_HINT}"
    if not cred.intact:
        return "its Content Credentials do not validate (" + \
            ", ".join(c for c in cred.failures if c != _UNTRUSTED) + ")"
    return None

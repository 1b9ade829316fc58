"""A C2PA signing chain made in the test (a CA, and a leaf it issued), and readers of what a
signed image says: c2pa's own Reader, ExifTool for the XMP marker."""

from __future__ import annotations

import datetime
import io
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from imagebatch.storage import credentials

UNTRUSTED = "signingCredential.untrusted"
MIME = {"png": "image/png", "jpeg": "image/jpeg", "jpg": "image/jpeg", "webp": "image/webp",
        "avif": "image/avif"}


def _usage(*, sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(digital_signature=sign, content_commitment=False,
                         key_encipherment=False, data_encipherment=False, key_agreement=False,
                         key_cert_sign=not sign, crl_sign=not sign, encipher_only=False,
                         decipher_only=False)


def make_chain(common_name: str = "imagebatch test signer") -> tuple[bytes, bytes]:
    """(PEM chain: leaf then CA, the leaf's private key PEM): a CA with keyCertSign, a leaf
    with digitalSignature, the emailProtection EKU and both key identifiers."""
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "imagebatch test CA"),
                         x509.NameAttribute(NameOID.ORGANIZATION_NAME, "imagebatch tests")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(days=1))
          .not_valid_after(now + datetime.timedelta(days=30))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(_usage(sign=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
                         critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "imagebatch tests")])
    leaf = (x509.CertificateBuilder().subject_name(name).issuer_name(ca_name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_usage(sign=True), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]),
                           critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    chain = leaf.public_bytes(serialization.Encoding.PEM) + \
        ca.public_bytes(serialization.Encoding.PEM)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    return chain, pem


def signing_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """The signing variables, the certificate as a path and the key as PEM text (both
    forms a team uses: a file on a laptop, a CI secret)."""
    chain, key = make_chain()
    cert = tmp_path / "c2pa-cert.pem"
    cert.write_bytes(chain)
    return {credentials.ENV_CERT: str(cert), credentials.ENV_KEY: key.decode(), **extra}


def signer(tmp_path: Path, name: str = "imagebatch test signer") -> credentials.SignerConfig:
    """A signer of a fresh chain."""
    chain, key = make_chain(name)
    return credentials.SignerConfig("es256", chain, key)


def manifest_of(data: bytes, fmt: str) -> tuple[str, list[str], dict[str, Any]]:
    """(validation state, failure codes, active manifest) as c2pa's Reader reads them."""
    import c2pa

    with c2pa.Reader(MIME[fmt], io.BytesIO(data)) as reader:
        state = reader.get_validation_state()
        results = reader.get_validation_results() or {}
        active = reader.get_active_manifest() or {}
    failures = [f["code"] for f in (results.get("activeManifest") or {}).get("failure") or []]
    return str(state), failures, active


def actions_of(active: dict[str, Any]) -> list[dict[str, Any]]:
    """Every action of a manifest's c2pa.actions assertions."""
    return [a for assertion in active.get("assertions") or []
            if str(assertion.get("label", "")).startswith("c2pa.actions")
            for a in assertion["data"]["actions"]]


def exiftool_source_type(path: Path) -> str | None:
    """DigitalSourceType as ExifTool (an independent reader) reads it; skips when ExifTool is
    missing outside CI (under CI it must be there: the Makefile installs it)."""
    tool = shutil.which("exiftool")
    if tool is None:
        if os.environ.get("CI"):
            pytest.fail("exiftool is missing (libimage-exiftool-perl; `make test-deps`)")
        pytest.skip("exiftool is not installed (libimage-exiftool-perl)")
    out = subprocess.run([tool, "-j", "-XMP-iptcExt:DigitalSourceType", str(path)],
                         capture_output=True, text=True, check=True, timeout=60).stdout
    value = json.loads(out)[0].get("DigitalSourceType")
    return None if value is None else str(value)

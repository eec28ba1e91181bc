"""Serving over TLS (`--ssl-certfile/--ssl-keyfile`): real portals are https-only, and clients that pin
certificates or refuse plain http must be testable. The certificate is self-signed at test time.
"""

from __future__ import annotations

import shutil
import ssl
import subprocess
from pathlib import Path

import httpx
import pytest

from emulator.testing import run_emulator


def _self_signed(directory: Path) -> tuple[str, str]:
    cert, key = directory / "cert.pem", directory / "key.pem"
    try:
        _with_cryptography(cert, key)
    except ImportError:
        if shutil.which("openssl") is None:
            pytest.skip("neither the cryptography package nor the openssl CLI is available")
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                        "-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1",
                        "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
    return str(cert), str(key)


def _with_cryptography(cert_path: Path, key_path: Path) -> None:
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))


def test_https_serving_with_a_self_signed_certificate(tmp_path):
    cert, key = _self_signed(tmp_path)
    with run_emulator(limits=False, ssl_certfile=cert, ssl_keyfile=key) as emu:
        assert emu.url.startswith("https://127.0.0.1:")
        trust = ssl.create_default_context(cafile=cert)
        with httpx.Client(verify=trust) as client:
            assert client.get(emu.webhook_url + "profile").json()["result"]["ID"] == 1
            tokens = emu.install_tokens()
            assert tokens["client_endpoint"] == f"{emu.url}/rest/"
            app_info = client.get(f"{emu.url}/rest/app.info", params={"auth": tokens["access_token"]})
            assert app_info.status_code == 200
        with pytest.raises(httpx.ConnectError):
            httpx.get(emu.webhook_url + "profile")  # not trusted without the certificate

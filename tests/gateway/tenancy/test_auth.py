"""Credentials: API keys (hashed in the tenants file) and OIDC bearer JWTs checked against a JWKS served
on 127.0.0.1; every refusal is a 401 whose WWW-Authenticate says why; the tenants file is checked at
start with messages that say what to fix; an open gateway says so."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from prometheus_client import REGISTRY

from musicsplit.gateway.tenancy.auth import Authenticator, key_hash
from musicsplit.gateway.settings import GatewaySettings
from musicsplit.gateway.tenancy.tenants import TenantsFileError, load_tenants

from tests.gateway.conftest import GatewayThread, bearer, make_settings, tenants_file, tone, wav_bytes

ISSUER, AUDIENCE = "https://id.example.test/", "musicsplit-api"


class Jwks:
    """An OIDC issuer's key set on a local HTTP server; signs tokens with its keys."""

    def __init__(self):
        self.keys = {kid: rsa.generate_private_key(public_exponent=65537, key_size=2048) for kid in ("k1", "k2")}
        self.fetches = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                outer.fetches += 1
                keys = []
                for kid, key in outer.keys.items():
                    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
                    keys.append({**jwk, "kid": kid, "use": "sig", "alg": "RS256"})
                body = json.dumps({"keys": keys}).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/jwks.json"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def token(self, *, kid: str = "k1", key=None, alg: str = "RS256", **claims) -> str:
        now = int(time.time())
        body = {"iss": ISSUER, "aud": AUDIENCE, "exp": now + 300, "iat": now, "sub": "svc-1", "tenant": "acme",
                **claims}
        body = {k: v for k, v in body.items() if v is not None}
        return jwt.encode(body, key if key is not None else self.keys[kid], algorithm=alg, headers={"kid": kid})

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def jwks():
    issuer = Jwks()
    yield issuer
    issuer.close()


@pytest.fixture(scope="module")
def gw(baseline_url, jwks, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gw-auth")
    keys = tenants_file(tmp / "tenants.yaml", {"acme": {}, "globex": {}},
                        {"acme": "acme-secret-key-1", "globex": "globex-secret-key-1"})
    gateway = GatewayThread(make_settings(tmp, [("dsp-baseline", baseline_url, "eu")], api_keys_file=keys,
                                          oidc_issuer=ISSUER, oidc_audience=AUDIENCE, oidc_jwks_url=jwks.url)).start()
    yield gateway
    gateway.stop()


def _failures(reason: str) -> float:
    return sum(s.value for m in REGISTRY.collect() if m.name == "musicsplit_gateway_auth_failures"
               for s in m.samples if s.name.endswith("_total") and s.labels.get("reason") == reason)


def _list(gw, headers) -> httpx.Response:
    return httpx.get(f"{gw.url}/v1/separations", headers=headers, timeout=10)


def test_an_api_key_names_its_tenant_and_a_wrong_one_is_refused(gw):
    r = _list(gw, bearer("globex-secret-key-1"))
    assert r.status_code == 200, r.text
    before = _failures("invalid_key")
    r = _list(gw, bearer("globex-secret-key-2"))
    assert r.status_code == 401 and r.json() == {"error": "the API key is not valid", "code": "unauthorized"}
    assert 'error="invalid_token"' in r.headers["www-authenticate"]
    assert _failures("invalid_key") == before + 1
    before = _failures("missing")
    for headers in ({}, {"Authorization": "Basic YWxhZGRpbjpvcGVu"}):
        r = _list(gw, headers)
        assert r.status_code == 401 and r.headers["www-authenticate"].startswith('Bearer realm="musicsplit"')
    assert _failures("missing") == before + 2


def test_a_valid_oidc_token_names_its_tenant(gw, jwks):
    token = jwks.token(tenant="acme")
    r = httpx.post(f"{gw.url}/v1/separations", files={"file": ("a.wav", wav_bytes(tone(1.0, seed=501)))},
                   data={"model": "dsp-baseline"}, headers=bearer(token), timeout=30)
    assert r.status_code == 202, r.text
    job = r.json()["id"]
    # The same tenant by its API key sees the job; another tenant does not.
    assert httpx.get(f"{gw.url}/v1/separations/{job}", headers=bearer("acme-secret-key-1")).status_code == 200
    assert httpx.get(f"{gw.url}/v1/separations/{job}", headers=bearer("globex-secret-key-1")).status_code == 404


@pytest.mark.parametrize("case,description", [
    ("wrong issuer", f"issuer is not {ISSUER}"),
    ("wrong audience", f"audience is not {AUDIENCE}"),
    ("expired", "has expired"),
    ("unknown kid", "signing key (kid) is not in the issuer's key set"),
    ("another key", "signature does not verify"),
    ("no tenant claim", "no tenant claim"),
    ("no expiry", "no exp claim"),
    ("hs256", "accepts RS256"),
])
def test_a_bad_token_is_a_401_that_says_why(gw, jwks, case, description):
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    token = {
        "wrong issuer": lambda: jwks.token(iss="https://evil.example/"),
        "wrong audience": lambda: jwks.token(aud="someone-else"),
        "expired": lambda: jwks.token(exp=int(time.time()) - 120),
        "unknown kid": lambda: jwks.token(kid="k9", key=other),
        "another key": lambda: jwks.token(kid="k1", key=other),
        "no tenant claim": lambda: jwks.token(tenant=None),
        "no expiry": lambda: jwks.token(exp=None),
        # A symmetric token (the classic trick: HMAC keyed with the public key) is never accepted.
        "hs256": lambda: jwks.token(key=b"k" * 32, alg="HS256"),
    }[case]()
    before = _failures("invalid_token")
    r = _list(gw, bearer(token))
    assert r.status_code == 401, r.text
    challenge = r.headers["www-authenticate"]
    assert challenge.startswith('Bearer realm="musicsplit", error="invalid_token", error_description="'), challenge
    assert description in challenge and description in r.json()["error"], (challenge, r.text)
    assert _failures("invalid_token") == before + 1


def test_a_tenant_known_only_by_its_oidc_token_gets_the_default_quota(black_hole, jwks, tmp_path):
    settings = make_settings(tmp_path, [("dsp-baseline", black_hole, "eu")], oidc_issuer=ISSUER,
                             oidc_audience=AUDIENCE, oidc_jwks_url=jwks.url, request_timeout_s=60,
                             health_interval_s=60, default_quota={"concurrent_jobs": 1})
    with GatewayThread(settings) as gateway:
        token = bearer(jwks.token(tenant="oidc-only"))

        def upload(seed):
            return httpx.post(f"{gateway.url}/v1/separations", files={"file": ("a.wav", wav_bytes(tone(1.0, seed=seed)))},
                              data={"model": "dsp-baseline"}, headers=token, timeout=30)

        first = upload(511)  # runs on the hung predictor, holding the tenant's one place
        assert first.status_code == 202, first.text
        second = upload(512)
        assert second.status_code == 429 and "quota concurrent_jobs is 1" in second.json()["error"], second.text
        httpx.delete(f"{gateway.url}/v1/separations/{first.json()['id']}", headers=token)


def test_a_token_for_a_tenant_not_served_here_is_a_403(gw, jwks):
    r = _list(gw, bearer(jwks.token(tenant="initech")))
    assert r.status_code == 403 and r.json()["code"] == "forbidden" and "'initech'" in r.json()["error"]


def test_the_key_set_is_cached_not_fetched_per_request(gw, jwks):
    token = jwks.token()
    assert _list(gw, bearer(token)).status_code == 200
    fetched = jwks.fetches
    for _ in range(5):
        assert _list(gw, bearer(jwks.token())).status_code == 200
    assert jwks.fetches == fetched


def test_the_cli_client_sends_its_api_key(gw, tmp_path):
    track = tmp_path / "song.wav"
    track.write_bytes(wav_bytes(tone(1.0, seed=502)))
    cmd = [sys.executable, "-m", "musicsplit.cli", "separate", str(track), "--url", gw.url, "--model", "dsp-baseline",
           "--out", str(tmp_path / "out"), "--stems", "vocals"]
    env = {k: v for k, v in os.environ.items() if k != "MUSICSPLIT_API_KEY"}
    refused = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    assert refused.returncode == 1 and "401" in refused.stderr, refused.stderr
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120,
                          env={**env, "MUSICSPLIT_API_KEY": "acme-secret-key-1"})
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "out" / "song.vocals.wav").stat().st_size > 0


def test_keys_are_compared_by_hash_and_never_printed(tmp_path):
    path = tenants_file(tmp_path / "t.yaml", {"acme": {"webhook_secret": "w" * 20, "callback_hosts": ["a.example"]}},
                        {"acme": "super-secret-key"})
    assert "super-secret-key" not in path.read_text() and key_hash("super-secret-key") in path.read_text()
    auth = Authenticator(GatewaySettings(api_keys_file=path))
    shown = auth.describe() + repr(auth.tenants)
    assert "super-secret-key" not in shown and "w" * 20 not in shown and "acme" in shown


@pytest.mark.parametrize("content,fragment", [
    ("tenants: {acme: {api_keys_sha256: [abc]}}", "tenants.acme.api_keys_sha256: Value error, each entry must be "
                                                  "the SHA-256 hex digest"),
    ("tenants: {Acme Corp: {}}", "tenant name 'Acme Corp'"),
    (f"tenants: {{a: {{api_keys_sha256: ['{'0' * 64}']}}, b: {{api_keys_sha256: ['{'0' * 64}']}}}}",
     "tenants 'a' and 'b' list the same key hash"),
    ("tenants: {acme: {callback_hosts: [hooks.acme.example]}}", "callback_hosts needs a webhook_secret"),
    ("tenants: {acme: {quota: {concurrent_jobs: 0}}}", "tenants.acme.quota.concurrent_jobs"),
    ("tenants: {acme: {quota: {jobs_per_hour: 3}}}", "tenants.acme.quota.jobs_per_hour: Extra inputs"),
    ("tenants: {acme: {callback_hosts: ['https://hooks.example/x'], webhook_secret: 0123456789abcdef}}",
     "is not a host name"),
    ("tenants: {}", "no tenants"),
    ("tenants: [acme\n  webhook_secret: hunter2hunter2hunter2", "not valid YAML at line"),
])
def test_a_bad_tenants_file_is_refused_with_what_to_fix(tmp_path, content, fragment):
    path = tmp_path / "tenants.yaml"
    path.write_text(content)
    with pytest.raises(TenantsFileError) as info:
        load_tenants(path)
    assert fragment in str(info.value), str(info.value)
    assert "hunter2" not in str(info.value)


def test_the_gateway_does_not_start_on_a_bad_tenants_file(tmp_path):
    path = tmp_path / "tenants.yaml"
    path.write_text("tenants: {acme: {api_keys_sha256: [not-a-hash]}}")
    done = subprocess.run([sys.executable, "-m", "musicsplit.cli", "serve", "gateway", "--data_dir", str(tmp_path),
                           "--api_keys_file", str(path), "--port", "1"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "tenants.acme.api_keys_sha256" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


def test_an_open_gateway_says_so_at_start(baseline_url, tmp_path, caplog):
    settings = make_settings(tmp_path, [("dsp-baseline", baseline_url, "eu")])
    with caplog.at_level("WARNING"), GatewayThread(settings) as gw:
        assert _list(gw, {}).status_code == 200  # no credentials needed: every caller is "public"
    assert any("the gateway is OPEN" in r.getMessage() for r in caplog.records)


def test_half_an_oidc_configuration_stops_the_gateway():
    with pytest.raises(ValueError, match="OIDC_JWKS_URL"):
        Authenticator(GatewaySettings(oidc_issuer=ISSUER, oidc_audience=AUDIENCE))

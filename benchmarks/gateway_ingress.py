"""Gateway: what a request costs in memory and time at the door, side by side.

    python benchmarks/gateway_ingress.py [--upload-mib 100] [--requests 200]

Starts the local stack (DSP-baseline predictor + gateway subprocesses on
127.0.0.1, the gateway with a tenants file and an OIDC issuer served
locally), then measures, in one run:

- memory: the gateway's peak RSS growth (VmHWM, reset before each case) for
  a 300 MiB chunked upload over the 200 MiB limit (refused), an accepted
  upload of --upload-mib MiB, and a v2 request whose binary answer is several
  times its body (streamed through), each against the bytes that went by;
- time: the median latency of an authenticated GET /v1/separations (a list
  page) open, with an API key, with an API key and a requests-per-minute
  quota (a counter upsert in the job store), and with an OIDC JWT.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import jwt
import numpy as np
import yaml
from cryptography.hazmat.primitives.asymmetric import rsa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from musicsplit.audio import encode  # noqa: E402
from musicsplit.gateway.tenancy.auth import key_hash  # noqa: E402
from musicsplit.localstack import start_gateway, start_predictor  # noqa: E402
from musicsplit.v2client import encode_request  # noqa: E402

MiB = 1024 * 1024
ISSUER, AUDIENCE = "https://id.bench.example/", "musicsplit"


def peak_reset(pid: int) -> int:
    Path(f"/proc/{pid}/clear_refs").write_text("5")
    return _status(pid)["VmRSS"]


def peak(pid: int) -> int:
    return _status(pid)["VmHWM"]


def _status(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            out[name] = int(value.split()[0]) * 1024
    return out


def chunked_upload(url: str, total: int, headers: dict[str, str]) -> int:
    """Send a multipart upload chunked (no Content-Length) until the server answers; bytes sent."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=60)
    head = ["POST /v1/separations HTTP/1.1", f"Host: {host}", "Transfer-Encoding: chunked",
            "Content-Type: multipart/form-data; boundary=b0undary", *(f"{k}: {v}" for k, v in headers.items())]
    sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode())
    part = b'--b0undary\r\nContent-Disposition: form-data; name="file"; filename="x.wav"\r\n\r\n'
    sock.sendall(b"%x\r\n" % len(part) + part + b"\r\n")
    block, sent = b"\0" * MiB, 0
    sock.setblocking(False)
    try:
        while sent < total:
            sock.setblocking(True)
            sock.sendall(b"%x\r\n" % len(block) + block + b"\r\n")
            sent += len(block)
            sock.setblocking(False)
            try:
                if sock.recv(1):
                    break
            except BlockingIOError:
                pass
    except OSError:
        pass
    sock.close()
    return sent


class Issuer:
    def __init__(self):
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        jwk = {**json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.key.public_key())), "kid": "k1", "alg": "RS256"}
        body = json.dumps({"keys": [jwk]}).encode()

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                self.send_response(200)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/jwks"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def token(self) -> str:
        now = int(time.time())
        return jwt.encode({"iss": ISSUER, "aud": AUDIENCE, "exp": now + 3600, "tenant": "acme"}, self.key,
                          algorithm="RS256", headers={"kid": "k1"})


def latency(client: httpx.Client, headers: dict[str, str], n: int) -> float:
    times = []
    for _ in range(n):
        start = time.perf_counter()
        r = client.get("/v1/separations", params={"limit": 1}, headers=headers)
        times.append(time.perf_counter() - start)
        assert r.status_code == 200, r.text
    return statistics.median(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upload-mib", type=int, default=100)
    parser.add_argument("--requests", type=int, default=200)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="musicsplit-bench-"))
    issuer = Issuer()
    tenants = {"acme": {"api_keys_sha256": [key_hash("acme-bench-key")]},
               "counted": {"api_keys_sha256": [key_hash("counted-bench-key")],
                           "quota": {"requests_per_minute": 1_000_000}}}
    (work / "tenants.yaml").write_text(yaml.safe_dump({"tenants": tenants}))
    predictor = start_predictor("builtin://dsp-baseline", "dsp-baseline", log_dir=work, threads=None)
    stacks = []
    try:
        secured = start_gateway([("dsp-baseline", predictor.url)], data_dir=work / "gw", log_dir=work,
                                default_model="dsp-baseline", env={
                                    "MUSICSPLIT_GATEWAY_API_KEYS_FILE": str(work / "tenants.yaml"),
                                    "MUSICSPLIT_GATEWAY_OIDC_ISSUER": ISSUER,
                                    "MUSICSPLIT_GATEWAY_OIDC_AUDIENCE": AUDIENCE,
                                    "MUSICSPLIT_GATEWAY_OIDC_JWKS_URL": issuer.url,
                                    # Jobs stay queued: what is measured is the door, not the separation.
                                    "MUSICSPLIT_GATEWAY_MAX_RUNNING_JOBS": "0"})
        stacks.append(secured)
        opened = start_gateway([("dsp-baseline", predictor.url)], data_dir=work / "open", log_dir=work,
                               default_model="dsp-baseline")
        stacks.append(opened)
        key = {"Authorization": "Bearer acme-bench-key"}
        pid = secured.proc.pid
        client = httpx.Client(base_url=secured.url, timeout=600)

        rows = []
        rng = np.random.default_rng(7)
        track = encode((0.1 * rng.standard_normal((2, 44100 * 20))).astype(np.float32), 44100, "wav")
        client.post("/v1/separations", files={"file": ("w.wav", track)}, headers=key).raise_for_status()  # warm
        before = peak_reset(pid)
        sent = chunked_upload(secured.url, 300 * MiB, key)
        rows.append(("300 MiB chunked upload, over the 200 MiB limit (413)", sent, peak(pid) - before))

        frames = args.upload_mib * MiB // 8  # float32 stereo
        big = encode((0.1 * rng.standard_normal((2, frames))).astype(np.float32), 44100, "wav")
        before = peak_reset(pid)
        r = client.post("/v1/separations", files={"file": ("big.wav", big)}, data={"model": "dsp-baseline"},
                        headers=key)
        r.raise_for_status()
        rows.append((f"{len(big) / MiB:.0f} MiB upload, accepted (202)", len(big), peak(pid) - before))
        client.delete(f"/v1/separations/{r.json()['id']}", headers=key)

        mix = (0.1 * rng.standard_normal((2, 44100 * 60))).astype(np.float32)
        body, headers = encode_request(mix, 44100)
        before = peak_reset(pid)
        with client.stream("POST", "/v2/models/dsp-baseline/infer", content=body,
                           headers={**headers, **key}) as answer:
            received = sum(len(c) for c in answer.iter_raw())
        rows.append((f"v2: {len(body) / MiB:.0f} MiB body, {received / MiB:.0f} MiB binary answer streamed",
                     len(body) + received, peak(pid) - before))

        print("| case | bytes through | peak RSS growth | growth / bytes |")
        print("|---|---|---|---|")
        for name, moved, growth in rows:
            print(f"| {name} | {moved / MiB:.0f} MiB | {growth / MiB:.1f} MiB | {growth / moved:.3f} |")

        counted = {"Authorization": "Bearer counted-bench-key"}
        oidc = {"Authorization": f"Bearer {issuer.token()}"}
        with httpx.Client(base_url=opened.url, timeout=60) as open_client:
            cases = [("open (no credentials)", open_client, {}), ("API key", client, key),
                     ("API key + requests_per_minute quota", client, counted), ("OIDC JWT (RS256)", client, oidc)]
            for _, c, h in cases:
                latency(c, h, 20)  # warm: connections, the JWKS fetch
            medians = {}
            for _ in range(2):  # interleaved rounds
                for name, c, h in cases:
                    medians.setdefault(name, []).append(latency(c, h, args.requests // 2))
        base = statistics.median(medians["open (no credentials)"])
        print("\n| GET /v1/separations?limit=1 | median ms | vs open |")
        print("|---|---|---|")
        for name, values in medians.items():
            m = statistics.median(values)
            print(f"| {name} | {m:.2f} | {m / base:.2f}x |")
        client.close()
    finally:
        for s in stacks:
            s.stop()
        predictor.stop()
        issuer.server.shutdown()


if __name__ == "__main__":
    main()

"""Load test of ``veil serve``: N concurrent clients for a fixed time against a local server.

    .venv/bin/python benchmarks/load_serve.py --clients 16 --duration 60

Starts ``veil serve --model linear:digits`` on 127.0.0.1 (a random free port; loopback only) in a
subprocess, uploads one public context, then runs ``--clients`` threads that send prediction
requests until ``--duration`` seconds have passed (each thread stops by itself; the whole run is
bounded). Reports throughput, p50/p99 latency and the error count (must be 0 for valid traffic),
next to the raw foundation: the same linear layer evaluated in-process on the same ciphertexts,
and the ideal throughput ``workers / in-process time``.

``--mode raw`` (default) replays one pre-encrypted request and checks every answer by its size
and a sample of them by decryption: it measures the server. ``--mode client`` runs the full
``Client.predict`` (encrypt, send, decrypt) in every thread: it measures what a user sees, with
client-side CKKS competing for the same cores.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time

import httpx
import numpy as np


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    idx = min(len(values) - 1, max(0, round(q / 100 * (len(values) - 1))))
    return values[idx]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--duration", type=float, default=60.0)
    ap.add_argument("--rows", type=int, default=4096, help="rows per request (<= 4096)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--mode", choices=("raw", "client"), default="raw")
    args = ap.parse_args()

    from sklearn.datasets import load_digits

    from veil import he
    from veil.protocols.inference import KIND_ENCRYPTED, pack_frames, unpack_frames
    from veil.serve import Client
    from veil.serve.evaluator import digits_linear

    model = digits_linear()
    data = load_digits().data / 16.0
    x = np.resize(data, (args.rows, 64))
    want = x @ model.weight + model.bias

    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [sys.executable, "-m", "veil.cli", "serve", "--model", "linear:digits", "--port",
         str(port), "--workers", str(args.workers), "--queue", str(max(32, args.clients)),
         "--deadline", "300"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        t0 = time.monotonic()
        while True:
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if server.poll() is not None or time.monotonic() - t0 > 180:
                raise SystemExit("server did not start")
            time.sleep(0.2)
        startup = time.monotonic() - t0

        ctx = he.CKKSContext.generate(model.info.params, galois_keys=False)
        setup = Client(url, context=ctx)
        t = time.perf_counter()
        cid = setup.upload_context()
        upload_s = time.perf_counter() - t
        ctx_bytes = len(ctx.public().serialize())

        # raw foundation: the same computation in this process, no HTTP, no worker
        t = time.perf_counter()
        tensors = [ctx.encrypt(np.ascontiguousarray(x[:, i])) for i in range(64)]
        encrypt_s = time.perf_counter() - t
        public = he.CKKSContext.load(ctx.public().serialize())
        local = [public.load_tensor(c.serialize()) for c in tensors]
        run = model.bind(public)
        runs = []
        for _ in range(3):
            t = time.perf_counter()
            run(local, args.rows, 0)
            runs.append(time.perf_counter() - t)
        inproc_s = min(runs)
        payload = pack_frames(KIND_ENCRYPTED, {"layout": "batched", "n_samples": args.rows,
                                               "windows": 0, "count": 64},
                              [c.serialize() for c in tensors])

        lat: list[float] = []
        errors: list[str] = []
        checked = [0]
        lock = threading.Lock()
        stop_at = time.monotonic() + args.duration

        def check(body: bytes) -> None:
            _, frames = unpack_frames(body, KIND_ENCRYPTED, max_bytes=1 << 28, max_frames=64)
            got = np.stack([np.asarray(ctx.decrypt(ctx.load_tensor(b))) for b in frames], axis=1)
            if not np.allclose(got, want, atol=1e-3):
                raise AssertionError("wrong prediction")

        def raw_worker(i: int) -> None:
            with httpx.Client(base_url=url, timeout=300) as http:
                n = 0
                while time.monotonic() < stop_at:
                    t = time.perf_counter()
                    try:
                        r = http.post("/predict", content=payload, headers={
                            "content-type": "application/octet-stream", "X-Veil-Context": cid})
                        if r.status_code != 200:
                            raise AssertionError(f"HTTP {r.status_code}: {r.text[:200]}")
                        dt = time.perf_counter() - t
                        if n % 8 == 0:
                            check(r.content)
                            with lock:
                                checked[0] += 1
                        with lock:
                            lat.append(dt)
                    except Exception as exc:  # counted and reported, never hidden
                        with lock:
                            errors.append(f"{type(exc).__name__}: {exc}")
                    n += 1

        def client_worker(i: int) -> None:
            with Client(url, context=ctx, timeout=300) as client:
                while time.monotonic() < stop_at:
                    t = time.perf_counter()
                    try:
                        got = client.predict(x)
                        dt = time.perf_counter() - t
                        if not np.allclose(got, want, atol=1e-3):
                            raise AssertionError("wrong prediction")
                        with lock:
                            lat.append(dt)
                            checked[0] += 1
                    except Exception as exc:
                        with lock:
                            errors.append(f"{type(exc).__name__}: {exc}")

        target = raw_worker if args.mode == "raw" else client_worker
        threads = [threading.Thread(target=target, args=(i,), daemon=True)
                   for i in range(args.clients)]
        t_start = time.monotonic()
        for th in threads:
            th.start()
        for th in threads:
            th.join(timeout=args.duration + 600)
        wall = time.monotonic() - t_start
        n = len(lat)
        result = {
            "machine": f"{os.cpu_count()} CPU cores",
            "mode": args.mode, "clients": args.clients, "workers": args.workers,
            "rows_per_request": args.rows, "duration_s": round(wall, 1),
            "requests_ok": n, "errors": len(errors), "error_samples": errors[:3],
            "answers_decrypted_and_checked": checked[0],
            "throughput_req_s": round(n / wall, 3),
            "throughput_rows_s": round(n * args.rows / wall, 1),
            "latency_p50_s": round(_percentile(lat, 50), 3),
            "latency_p99_s": round(_percentile(lat, 99), 3),
            "latency_mean_s": round(statistics.fmean(lat), 3) if lat else None,
            "request_bytes": len(payload),
            "server_startup_s": round(startup, 2),
            "context_bytes": ctx_bytes, "context_upload_s": round(upload_s, 3),
            "client_encrypt_s": round(encrypt_s, 3),
            "inprocess_eval_s": round(inproc_s, 3),
            "ideal_throughput_req_s": round(args.workers / inproc_s, 3),
            "throughput_vs_ideal": round((n / wall) / (args.workers / inproc_s), 3),
        }
        print(json.dumps(result, indent=2))
        return 0 if not errors and n else 1
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()


if __name__ == "__main__":
    sys.exit(main())

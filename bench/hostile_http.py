"""The crawler's HTTP client against hostile responses, on 127.0.0.1: how long a response whose
status line and headers trickle in one byte at a time holds a fetch, and how much memory a response
with stacked compression (`Content-Encoding: gzip, gzip`, 2 GB decoded) costs.

    .venv/bin/python -m bench.hostile_http [--timeout-s 1] [--decoded-mb 2048]

Targets: abandoned within 3 x crawl.timeout_s; under 200 MB of memory above an ordinary fetch.
"""

from __future__ import annotations

import argparse
import gzip
import http.server
import resource
import threading
import time

from bench.common import write_result


def serve(decoded_mb: int, trickle_pause_s: float) -> http.server.ThreadingHTTPServer:
    # Compressed in pieces: the 2 GB never exist in this process either.
    inner = gzip.compress(b"\0" * (64 << 20), compresslevel=1) * (decoded_mb // 64)  # gzip members concatenate
    bomb = gzip.compress(inner, compresslevel=9)
    ordinary = b"\xff" * 200_000

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:  # noqa: N802
            try:
                if self.path == "/bomb":
                    self.send_response(200)
                    self.send_header("Content-Encoding", "gzip, gzip")
                    self.send_header("Content-Length", str(len(bomb)))
                    self.end_headers()
                    self.wfile.write(bomb)
                elif self.path == "/trickle":
                    for byte in b"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nContent-Length: 3\r\n\r\nabc":
                        self.wfile.write(bytes([byte]))
                        time.sleep(trickle_pause_s)
                else:
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(ordinary)))
                    self.end_headers()
                    self.wfile.write(ordinary)
            except (BrokenPipeError, ConnectionResetError):
                pass

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def fetch_in_a_fresh_process(url: str, timeout_s: float) -> tuple[str, float, float]:
    """(outcome, seconds, this process's peak RSS in MB): run in its own process, so that the peak
    is the fetch's and nothing else's."""
    from pipeline.config import CrawlConfig
    from pipeline.ingest.crawl.http import Fetcher, FetchFailed

    cfg = CrawlConfig(allow_private=["127.0.0.1"], min_delay_s=0, timeout_s=timeout_s, max_retries=0)
    with Fetcher(cfg) as fetcher:
        started = time.monotonic()
        try:
            fetcher.get(url, check_robots=False)
            outcome = "fetched"
        except FetchFailed as exc:
            outcome = f"{exc.kind}: {exc}"
        seconds = time.monotonic() - started
    return outcome, seconds, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--timeout-s", type=float, default=1.0)
    parser.add_argument("--decoded-mb", type=int, default=2048)
    args = parser.parse_args()
    server = serve(args.decoded_mb, trickle_pause_s=args.timeout_s * 0.4)
    base = f"http://127.0.0.1:{server.server_address[1]}"
    results = {}
    for name in ("ordinary", "bomb", "trickle"):
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            results[name] = pool.submit(fetch_in_a_fresh_process, f"{base}/{name}", args.timeout_s).result()
    bomb, _, bomb_peak = results["bomb"]
    bomb_mb = bomb_peak - results["ordinary"][2]
    trickle, abandoned_s, _ = results["trickle"]
    server.shutdown()
    print(f"stacked gzip ({args.decoded_mb} MB decoded): {bomb}; peak memory {bomb_mb:+.0f} MB over an ordinary fetch (target < 200)")
    print(
        f"trickled headers: {trickle}; abandoned after {abandoned_s:.2f} s = {abandoned_s / args.timeout_s:.2f} x timeout_s (target <= 3)"
    )
    write_result(
        "hostile_http",
        {"timeout_s": args.timeout_s, "stacked_gzip_decoded_mb": args.decoded_mb, "stacked_gzip_outcome": bomb,
         "stacked_gzip_peak_mb_above_ordinary": round(bomb_mb, 1), "trickled_headers_outcome": trickle,
         "trickled_headers_abandoned_s": round(abandoned_s, 2), "abandoned_in_timeouts": round(abandoned_s / args.timeout_s, 2)},
    )  # fmt: skip


if __name__ == "__main__":
    main()

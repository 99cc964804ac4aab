"""Web app latency on the starter pack: launch → first image, then p50/p95 of `/generate` with
1, 4 and 8 concurrent gradio_client users. Writes benchmarks/results/app_latency.md.

The app runs as users run it (`loratlas serve` in a subprocess, a fresh LORATLAS_HOME unless
--home is given, so the first image includes opening and seeding the library)."""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from common import RESULTS, ROOT, machine_line

PROMPT = "a red star, chunky blocks like an old video game"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_up(url: str, server: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"the app exited with code {server.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"the app did not answer at {url} within {timeout:.0f} s")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    rank = q / 100 * (len(ordered) - 1)
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def run_users(url: str, users: int, requests_each: int, job: dict) -> tuple[list[float], float]:
    """`users` clients, each sending `requests_each` generate requests one after another."""
    from gradio_client import Client

    latencies: list[float] = []
    errors: list[Exception] = []
    lock = threading.Lock()
    clients = [Client(url, verbose=False) for _ in range(users)]
    barrier = threading.Barrier(users)

    def user(index: int) -> None:
        barrier.wait()
        for r in range(requests_each):
            started = time.perf_counter()
            try:
                clients[index].predict(**job, seed=1000 * index + r, api_name="/generate")
            except Exception as exc:  # recorded, and the run fails below
                with lock:
                    errors.append(exc)
                continue
            with lock:
                latencies.append(time.perf_counter() - started)

    wall = time.perf_counter()
    threads = [threading.Thread(target=user, args=(i,)) for i in range(users)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - wall
    if errors:
        raise SystemExit(f"{len(errors)} of {users * requests_each} requests failed with "
                         f"{users} users: {errors[0]!r}")
    return latencies, wall


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--users", default="1,4,8")
    parser.add_argument("--requests", type=int, default=3, help="requests per user per level")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--styles", type=int, default=2, help="styles retrieved for the prompt")
    parser.add_argument("--mode", default=None, help="default: the page's default mode")
    parser.add_argument("--home", help="LORATLAS_HOME to reuse (default: a fresh one)")
    parser.add_argument("--threads", type=int, help="OMP_NUM_THREADS for the app (default: "
                        "torch's own choice, as a deployment runs)")
    parser.add_argument("--out", default=str(RESULTS / "app_latency.md"))
    parser.add_argument("--append", action="store_true", help="add this run to --out")
    args = parser.parse_args()

    from gradio_client import Client

    home = Path(args.home) if args.home else Path(tempfile.mkdtemp(prefix="loratlas-bench-"))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "LORATLAS_HOME": str(home), "GRADIO_ANALYTICS_ENABLED": "False",
           "HF_HUB_OFFLINE": "1"}
    env.pop("LORATLAS_LIBRARY", None)
    env.pop("OMP_NUM_THREADS", None)
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    command = [str(Path(sys.executable).parent / "loratlas"), "serve", "--port", str(port)]
    load = os.getloadavg()

    # 1. launch → page answers → first image, as a user gets it: styles retrieved for the
    #    prompt, then one image generated with them
    started = time.perf_counter()
    server = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
    try:
        wait_until_up(url, server, timeout=300)
        page_up = time.perf_counter() - started
        client = Client(url, verbose=False)
        choices = client.view_api(print_info=False, return_format="dict")
        hits = client.predict(PROMPT, args.styles, api_name="/retrieve")["hits"]
        styles = [{"slug": h["slug"], "weight": 1.0} for h in hits]
        picked = "retrieved for the prompt"
        if not styles:  # time styled generation anyway: the library's first styles
            listed = client.predict(text="", family=None, tags=[], api_name="/library_list")
            styles = [{"slug": s["slug"], "weight": 1.0} for s in listed
                      if s["applicable"]][:args.styles]
            picked = "retrieval found none for the prompt; the library's first styles"
        job = {"prompt": PROMPT, "styles": styles, "mode": args.mode or default_mode(choices),
               "steps": args.steps, "size": "native", "count": 1}
        client.predict(**job, seed=0, api_name="/generate")
        first_image = time.perf_counter() - started

        # 2. latency under 1, 4, 8 users (a warm app)
        rows = []
        for users in (int(u) for u in args.users.split(",")):
            latencies, wall = run_users(url, users, args.requests, job)
            rows.append((users, len(latencies), percentile(latencies, 50),
                         percentile(latencies, 95), max(latencies),
                         len(latencies) / wall * 60))
            print(f"{users} users: p50 {rows[-1][2]:.2f} s, p95 {rows[-1][3]:.2f} s", flush=True)
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
        if not args.home:
            shutil.rmtree(home, ignore_errors=True)

    write_report(Path(args.out), args, load, page_up, first_image, job, rows, picked)
    return 0


def default_mode(api: dict) -> str:
    for parameter in api["named_endpoints"]["/generate"]["parameters"]:
        if parameter["parameter_name"] == "mode":
            return parameter.get("parameter_default") or "merge"
    return "merge"


def write_report(out: Path, args, load, page_up, first_image, job, rows, picked) -> None:
    styles = ", ".join(s["slug"] for s in job["styles"]) or "none"
    lines = [
        *([] if args.append else ["# Web app latency (starter pack)", ""]),
        f"## Run of {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}", "",
        f"{machine_line()} Load average at start {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f} "
        "(the 2 cores are shared with other jobs).", "",
        "Command: `.venv/bin/python benchmarks/app_latency.py "
        + " ".join(sys.argv[1:]) + "`", "",
        "The app: `loratlas serve` in a subprocess on the starter pack (64×64), "
        + ("a `LORATLAS_HOME` whose library was already seeded" if args.home else
           "a fresh `LORATLAS_HOME` (the first request opens and seeds the library)")
        + f". Each request: `/generate` of one image, {job['steps']} steps, mode "
        f"`{job['mode']}`, styles {styles} ({picked}; prompt \"{PROMPT}\"), a different seed "
        "each time. Latency is submit → result at the client, "
        "queue wait included. The queue runs generation one request at a time. Torch threads "
        f"in the app: {args.threads or 'default'}.", "",
        "| launch to … | seconds |", "|---|---:|",
        f"| page answers | {page_up:.1f} |",
        f"| first image (retrieve + generate through the API) | {first_image:.1f} |", "",
        "| concurrent users | requests | p50 s | p95 s | max s | images / min |",
        "|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {u} | {n} | {p50:.2f} | {p95:.2f} | {mx:.2f} | {rate:.1f} |"
              for u, n, p50, p95, mx, rate in rows]
    out.parent.mkdir(parents=True, exist_ok=True)
    before = out.read_text() + "\n" if args.append and out.is_file() else ""
    out.write_text(before + "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Soak test of `ember serve`: concurrent clients, random valid and invalid requests, kill -9 and restart.

Standard library only (Python 3.11+). Loopback only. Bounded in time (--duration) and in requests
(--max-requests); it always kills the server it started. See tools/soak/README.md for what it measures.

    python3 tools/soak/soak.py --duration 600 --clients 4 --seed 1 --json soak.json
"""

from __future__ import annotations

import argparse
import atexit
import collections
import ctypes
import http.client
import ipaddress
import json
import os
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TERMINAL = ("done", "failed", "canceled")
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXAMPLES_PER_ANOMALY = 20


# ----------------------------------------------------------------------------------------------------------------
# Shared state


class State:
    """Everything the clients record, under one lock."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.stop = threading.Event()
        # Server liveness as the chaos loop knows it; `epoch` changes at every kill and every successful start.
        self.up = False
        self.epoch = 0
        self.requests = 0
        self.max_requests = 0
        # job id -> {"kind", "t", "cancel_status"}: every id received with a 201.
        self.jobs: dict[int, dict] = {}
        self.pending: set[int] = set()  # ids last seen queued/running (or never polled)
        self.terminal_seen: dict[int, tuple[str, float]] = {}  # id -> (first terminal status, time received)
        self.image_ids: set[int] = set()
        self.samplers: list[str] = ["k_lms"]
        self.counts: collections.Counter = collections.Counter()  # (kind, outcome) -> n
        self.list_latencies: list[float] = []  # seconds, successful GET /api/jobs
        self.anomalies: dict[str, list] = collections.defaultdict(list)
        self.anomaly_counts: collections.Counter = collections.Counter()
        self.ambiguous_submits = 0  # a submit whose answer never came (connection error or timeout)

    def anomaly(self, kind: str, **detail) -> None:
        with self.lock:
            self.anomaly_counts[kind] += 1
            if len(self.anomalies[kind]) < EXAMPLES_PER_ANOMALY:
                detail["t"] = round(time.time(), 3)
                self.anomalies[kind].append(detail)

    def take_request(self) -> bool:
        with self.lock:
            if self.requests >= self.max_requests:
                self.stop.set()
                return False
            self.requests += 1
            return True


# ----------------------------------------------------------------------------------------------------------------
# HTTP


class Answer:
    def __init__(self, status, body: bytes, latency: float, error: str | None = None, epoch_changed=False):
        self.status = status  # int, or None when no answer came
        self.body = body
        self.latency = latency
        self.error = error  # "conn" | "timeout" | None
        self.epoch_changed = epoch_changed

    def json(self):
        try:
            return json.loads(self.body)
        except ValueError:
            return None


def request(state: State, host: str, port: int, method: str, path: str, body: bytes | None = None,
            headers: dict | None = None, timeout: float = 10.0) -> Answer:
    epoch0, up0 = state.epoch, state.up
    t0 = time.monotonic()
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        data = resp.read()
        return Answer(resp.status, data, time.monotonic() - t0)
    except (socket.timeout, TimeoutError):
        kind = "timeout"
    except (ConnectionError, http.client.HTTPException, OSError):
        kind = "conn"
    finally:
        conn.close()
    changed = not (up0 and state.up and epoch0 == state.epoch)
    return Answer(None, b"", time.monotonic() - t0, kind, changed)


def multipart(params: dict, image: tuple[str, bytes, str] | None) -> tuple[bytes, str]:
    boundary = "soak" + uuid.uuid4().hex
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="params"\r\n'
        f"Content-Type: application/json\r\n\r\n".encode() + json.dumps(params).encode() + b"\r\n"
    ]
    if image:
        name, data, ctype = image
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="init_image"; filename="{name}"\r\n'
            f"Content-Type: {ctype}\r\n\r\n".encode() + data + b"\r\n"
        )
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


# ----------------------------------------------------------------------------------------------------------------
# The server under test


def set_pdeathsig() -> None:
    """In the child: die with the soak process (Linux), so a killed soak leaves no server behind."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


class Server:
    def __init__(self, binary: str, model: str, host: str, port: int, data_dir: str, log_dir: str, log_level: str):
        self.binary, self.model, self.host, self.port = binary, model, host, port
        self.data_dir, self.log_dir, self.log_level = data_dir, log_dir, log_level
        self.proc: subprocess.Popen | None = None
        self.starts = 0
        self.kills = 0
        self.start_times: list[float] = []
        self.peak_rss_kb = 0  # max VmHWM / VmRSS seen over all server processes
        self.rss_lock = threading.Lock()
        self.stdout_path = os.path.join(log_dir, "server-stdout.log")
        self.stderr_path = os.path.join(log_dir, "server-stderr.log")

    def _marker(self, text: str) -> None:
        for path in (self.stdout_path, self.stderr_path):
            with open(path, "a") as f:
                f.write(f"===== soak {time.strftime('%H:%M:%S')} {text}\n")

    def start(self, state: State, timeout: float = 120.0) -> None:
        """Starts the server (on self.port; 0 = pick one, then keep it) and waits for GET /api/health = 200."""
        for attempt in range(5):
            self._marker(f"start #{self.starts + 1} (attempt {attempt + 1})")
            out_offset = os.path.getsize(self.stdout_path) if os.path.exists(self.stdout_path) else 0
            cmd = [self.binary, "serve", "--model", self.model, "--host", self.host, "--port", str(self.port),
                   "--data-dir", self.data_dir, "--device", "cpu", "--dtype", "f32"]
            env = dict(os.environ)
            env.setdefault("EMBER_LOG", self.log_level)
            env.pop("EMBER_TOKEN", None)
            with open(self.stdout_path, "ab") as out, open(self.stderr_path, "ab") as err:
                self.proc = subprocess.Popen(cmd, stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=env,
                                             preexec_fn=set_pdeathsig)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    break
                if self.port == 0:
                    with open(self.stdout_path, "rb") as f:
                        f.seek(out_offset)
                        m = re.search(rb"listening on http://[^:/]+:(\d+)", f.read())
                    if m:
                        self.port = int(m.group(1))
                    else:
                        time.sleep(0.1)
                        continue
                a = request(state, self.host, self.port, "GET", "/api/health", timeout=2)
                if a.status == 200:
                    self.starts += 1
                    self.start_times.append(time.time())
                    with state.lock:
                        state.up = True
                        state.epoch += 1
                    return
                time.sleep(0.1)
            # Did not come up (port still held, crash at start): kill it and try again.
            self._kill_proc()
            time.sleep(1 + attempt)
        raise RuntimeError(f"the server did not start; see {self.stderr_path}")

    def _kill_proc(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.sample_rss()
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def kill9(self, state: State) -> None:
        with state.lock:
            state.up = False
            state.epoch += 1
        self._marker("kill -9")
        self._kill_proc()
        self.kills += 1

    def stop(self) -> None:
        """Ends the server for good: SIGTERM, then SIGKILL after 15 s."""
        if self.proc and self.proc.poll() is None:
            self.sample_rss()
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def sample_rss(self) -> None:
        proc = self.proc
        if not proc or proc.poll() is not None:
            return
        try:
            with open(f"/proc/{proc.pid}/status") as f:
                text = f.read()
        except OSError:
            return
        kb = [int(m) for m in re.findall(r"^Vm(?:HWM|RSS):\s+(\d+) kB", text, re.M)]
        if kb:
            with self.rss_lock:
                self.peak_rss_kb = max(self.peak_rss_kb, *kb)


# ----------------------------------------------------------------------------------------------------------------
# Clients


PROMPTS = [
    "a photo of a cat", "a red car on a road+", "(a lighthouse)1.3 at dusk", "a castle [fog]",
    '("a forest", "a city").blend(1, 1)', "a bowl of fruit, oil painting", "mountains-- at sunrise",
    "a:0.25 b:0.75", r"a sign saying \(hello\)",
]


def valid_params(rng: random.Random, state: State) -> dict:
    w, h = rng.choice([64, 96, 128]), rng.choice([64, 96, 128])
    p = {
        "prompt": rng.choice(PROMPTS),
        "steps": rng.randint(1, 8),
        "cfg_scale": round(rng.uniform(1, 12), 2),
        "sampler": rng.choice(state.samplers),
        "width": w,
        "height": h,
    }
    if rng.random() < 0.5:
        p["seed"] = rng.randrange(2**32)
    if rng.random() < 0.2:
        p["negative_prompt"] = "blurry"
    if rng.random() < 0.1:
        p["seamless"] = True
    if rng.random() < 0.1:
        p["variation_amount"] = round(rng.random(), 2)
    if rng.random() < 0.05:
        p["threshold"] = 1.0
    if rng.random() < 0.05 and w % 64 == 0 and h % 64 == 0:
        p["perlin"] = 0.3
    return p


def invalid_request(rng: random.Random, state: State, init_png: bytes):
    """(name, method, path, body, headers, expected statuses or None = any 4xx)."""
    good = json.dumps({"prompt": "a cat", "width": 64, "height": 64, "steps": 2}).encode()
    jh = {"Content-Type": "application/json"}

    def js(p):
        return json.dumps(p).encode()

    choices = [
        ("bad_json", "POST", "/api/jobs", b'{"prompt": "a cat", "steps": ', jh, None),
        ("strength_1.5", "POST", "/api/jobs", None, None, None),  # multipart, built below
        ("cfg_scale_-5", "POST", "/api/jobs", js({"prompt": "a cat", "cfg_scale": -5, "width": 64, "height": 64}),
         jh, {400}),
        ("broken_blend", "POST", "/api/jobs", js({"prompt": '("a", "b").blend(', "width": 64, "height": 64}),
         jh, {400}),
        ("huge_size", "POST", "/api/jobs", js({"prompt": "a cat", "width": 8192, "height": 8192, "steps": 1}),
         jh, {400}),
        ("over_work_budget", "POST", "/api/jobs",
         js({"prompt": "a cat", "width": 1024, "height": 1024, "steps": 1000}), jh, {400}),
        ("empty_prompt", "POST", "/api/jobs", js({"prompt": "", "width": 64, "height": 64}), jh, {400}),
        ("unknown_sampler", "POST", "/api/jobs", js({"prompt": "a", "sampler": "k_nope", "width": 64, "height": 64}),
         jh, {400}),
        ("steps_type", "POST", "/api/jobs", js({"prompt": "a", "steps": "many"}), jh, {400}),
        ("deep_parens", "POST", "/api/jobs",
         js({"prompt": "a", "negative_prompt": "(" * 150 + "x" + ")" * 150, "width": 64, "height": 64}), jh, {400}),
        ("perlin_96", "POST", "/api/jobs", js({"prompt": "a", "perlin": 0.5, "width": 96, "height": 64}), jh, {400}),
        ("cross_site_origin", "POST", "/api/jobs", good, {**jh, "Origin": "http://evil.example"}, {403}),
        ("sec_fetch_cross_site", "POST", "/api/jobs", good, {**jh, "Sec-Fetch-Site": "cross-site"}, {403}),
        ("null_origin", "POST", "/api/jobs", good, {**jh, "Origin": "null"}, {403}),
        ("rebinding_host", "POST", "/api/jobs", good, {**jh, "Host": "evil.example"}, {421}),
        ("rebinding_host_get", "GET", "/api/jobs", None, {"Host": "evil.example:80"}, {421}),
        ("garbage_init_image", "POST", "/api/jobs", None, None, None),  # multipart, built below
        ("text_plain", "POST", "/api/jobs", good, {"Content-Type": "text/plain"}, None),
        ("bad_limit", "GET", "/api/jobs?limit=abc", None, None, {400}),
        ("bad_status", "GET", "/api/jobs?status=bogus", None, None, {400}),
        ("cross_site_cancel", "POST", "/api/jobs/1/cancel", None, {"Origin": "http://evil.example"}, {403}),
    ]
    name, method, path, body, headers, expect = rng.choice(choices)
    if name == "strength_1.5":
        body, ctype = multipart({"prompt": "a cat", "strength": 1.5, "steps": 4}, ("init.png", init_png, "image/png"))
        headers, expect = {"Content-Type": ctype}, {400}
    elif name == "garbage_init_image":
        body, ctype = multipart({"prompt": "a cat", "steps": 4}, ("init.png", os.urandom(300), "image/png"))
        headers, expect = {"Content-Type": ctype}, {400}
    return name, method, path, body, headers, expect


def observe_job(state: State, job: dict, t_start: float) -> None:
    """Records a Job object from any answer; flags a finished job seen in another state afterwards."""
    try:
        jid, status = int(job["id"]), job["status"]
    except (KeyError, TypeError, ValueError):
        return
    now = time.monotonic()
    with state.lock:
        if jid not in state.jobs:
            return
        seen = state.terminal_seen.get(jid)
        if status in TERMINAL:
            state.pending.discard(jid)
            if seen is None:
                state.terminal_seen[jid] = (status, now)
            if job.get("image_id") is not None:
                state.image_ids.add(int(job["image_id"]))
        else:
            if seen is None:
                state.pending.add(jid)
    # The request started after the terminal status was received, yet answered something else.
    if seen is not None and status != seen[0] and t_start > seen[1]:
        state.anomaly("status_changed_after_finish", job_id=jid, first=seen[0], later=status)


def client(idx: int, state: State, args, host: str, port_ref: list, init_png: bytes) -> None:
    rng = random.Random(f"{args.seed}-{idx}")
    weights = {
        "submit_txt2img": 16, "submit_img2img": 6, "invalid": 14, "cancel": 5, "list_jobs": 25,
        "get_job": 15, "gallery": 8, "image_file": 5, "health": 4,
    }
    kinds, w = list(weights), list(weights.values())

    def count(kind, outcome):
        with state.lock:
            state.counts[(kind, outcome)] += 1

    def conn_outcome(a: Answer) -> str:
        if a.error == "timeout":
            return "timeout" if not a.epoch_changed else "timeout_server_down"
        return "conn_error_server_down" if a.epoch_changed else "conn_error_while_up"

    def check_status(kind, a: Answer, ok: set, detail=None) -> bool:
        if a.status is None:
            count(kind, conn_outcome(a))
            return False
        count(kind, str(a.status))
        if a.status >= 500:
            state.anomaly("http_5xx", request=kind, status=a.status, body=a.body[:300].decode("utf8", "replace"),
                          detail=detail)
        elif a.status not in ok:
            state.anomaly("unexpected_status", request=kind, status=a.status,
                          body=a.body[:300].decode("utf8", "replace"), detail=detail)
        return a.status in ok

    while not state.stop.is_set():
        if not state.take_request():
            break
        time.sleep(rng.uniform(0, args.think_ms / 1000))
        kind = rng.choices(kinds, w)[0]
        with state.lock:
            pending_n = len(state.pending)
            known = list(state.jobs) if kind in ("cancel", "get_job") else None
            pending = list(state.pending) if kind in ("get_job",) else None
            images = list(state.image_ids) if kind == "image_file" else None
        if kind.startswith("submit") and pending_n >= args.max_pending:
            kind = "list_jobs"  # back-pressure: the queue is long enough; poll instead
        port = port_ref[0]
        t_start = time.monotonic()

        if kind in ("submit_txt2img", "submit_img2img"):
            params = valid_params(rng, state)
            if kind == "submit_txt2img":
                body, headers = json.dumps(params).encode(), {"Content-Type": "application/json"}
            else:
                for k in ("width", "height", "perlin", "seamless"):
                    params.pop(k, None)
                params["steps"] = rng.randint(4, 8)
                params["strength"] = round(rng.uniform(0.5, 0.9), 2)
                if rng.random() < 0.3:
                    # fit: the init image is resized to fit width×height (default 512×512: far slower).
                    params.update(fit=True, width=rng.choice([64, 128]), height=rng.choice([64, 128]))
                body, ctype = multipart(params, ("init-64x96.png", init_png, "image/png"))
                headers = {"Content-Type": ctype}
            a = request(state, host, port, "POST", "/api/jobs", body, headers, args.timeout)
            if a.status is None:
                with state.lock:
                    state.ambiguous_submits += 1
            if check_status(kind, a, {201}, detail=params) and a.status == 201:
                job = a.json()
                try:
                    jid = int(job["id"])
                except (KeyError, TypeError, ValueError):
                    state.anomaly("bad_201_body", body=a.body[:300].decode("utf8", "replace"))
                    continue
                with state.lock:
                    if jid in state.jobs:
                        state.anomaly_counts["duplicate_job_id"] += 1
                    state.jobs[jid] = {"kind": kind, "t": time.time(), "cancel_status": None}
                    state.pending.add(jid)
                observe_job(state, job, t_start)

        elif kind == "invalid":
            name, method, path, body, headers, expect = invalid_request(rng, state, init_png)
            a = request(state, host, port, method, path, body, headers, args.timeout)
            k = f"invalid:{name}"
            if a.status is None:
                count(k, conn_outcome(a))
                continue
            count(k, str(a.status))
            text = a.body[:300].decode("utf8", "replace")
            if a.status == 201 or (200 <= a.status < 300 and method == "POST"):
                state.anomaly("invalid_accepted", request=name, status=a.status, body=text)
                job = a.json() or {}
                if "id" in job:  # it is a job now: account for it like the others
                    with state.lock:
                        state.jobs[int(job["id"])] = {"kind": k, "t": time.time(), "cancel_status": None}
                        state.pending.add(int(job["id"]))
            elif a.status >= 500:
                state.anomaly("http_5xx", request=name, status=a.status, body=text)
            elif not 400 <= a.status < 500 or (expect and a.status not in expect):
                state.anomaly("unexpected_status", request=name, status=a.status, body=text)

        elif kind == "cancel":
            if known and rng.random() < 0.9:
                jid = rng.choice(known)
            else:
                jid = 10**9 + rng.randrange(1000)  # unknown id → 404
            a = request(state, host, port, "POST", f"/api/jobs/{jid}/cancel", b"", None, args.timeout)
            ok = {200, 409} if jid < 10**9 else {404}
            if check_status("cancel", a, ok, detail={"job_id": jid}) and a.status == 200:
                job = a.json() or {}
                if job.get("status") == "canceled":
                    with state.lock:
                        state.jobs[jid]["cancel_status"] = "canceled"
                observe_job(state, job, t_start)

        elif kind == "list_jobs":
            q = rng.choice(["", "?limit=50", "?status=queued&limit=200", "?status=running", "?status=done&limit=20",
                            "?limit=500"])
            a = request(state, host, port, "GET", "/api/jobs" + q, None, None, args.timeout)
            if check_status("list_jobs", a, {200}, detail=q):
                with state.lock:
                    state.list_latencies.append(a.latency)
                for job in (a.json() or {}).get("jobs", []):
                    observe_job(state, job, t_start)

        elif kind == "get_job":
            pool = pending if pending and rng.random() < 0.7 else known
            if not pool:
                continue
            jid = rng.choice(pool)
            a = request(state, host, port, "GET", f"/api/jobs/{jid}", None, None, args.timeout)
            if a.status == 404:
                state.anomaly("known_job_404", job_id=jid)
            if check_status("get_job", a, {200}, detail={"job_id": jid}):
                observe_job(state, a.json() or {}, t_start)

        elif kind == "gallery":
            page = rng.randint(1, 5)
            a = request(state, host, port, "GET", f"/api/images?page={page}&per_page=24", None, None, args.timeout)
            if check_status("gallery", a, {200}):
                with state.lock:
                    for img in (a.json() or {}).get("images", []):
                        state.image_ids.add(int(img["id"]))

        elif kind == "image_file":
            if not images:
                continue
            iid = rng.choice(images)
            a = request(state, host, port, "GET", f"/api/images/{iid}/file", None, None, args.timeout)
            if check_status("image_file", a, {200}, detail={"image_id": iid}) and not a.body.startswith(PNG_SIGNATURE):
                state.anomaly("image_not_png", image_id=iid, first_bytes=a.body[:16].hex())

        elif kind == "health":
            a = request(state, host, port, "GET", "/api/health", None, None, args.timeout)
            check_status("health", a, {200})


def rss_sampler(state: State, server: Server) -> None:
    while not state.stop.wait(1.0):
        server.sample_rss()


# ----------------------------------------------------------------------------------------------------------------
# Final accounting


def get_json(state, host, port, path, timeout=30.0, tries=5):
    for i in range(tries):
        a = request(state, host, port, "GET", path, timeout=timeout)
        if a.status is not None:
            return a.status, a.json(), a.body
        time.sleep(1 + i)
    return None, None, b""


def drain(state: State, host: str, port: int, timeout: float) -> tuple[bool, float]:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        s1, q, _ = get_json(state, host, port, "/api/jobs?status=queued&limit=1")
        s2, r, _ = get_json(state, host, port, "/api/jobs?status=running&limit=1")
        if s1 == 200 and s2 == 200 and not q["jobs"] and not r["jobs"]:
            return True, time.monotonic() - t0
        time.sleep(0.5)
    return False, time.monotonic() - t0


def account(state: State, host: str, port: int, data_dir: str) -> dict:
    res = {
        "submitted": len(state.jobs), "completed": 0, "failed": 0, "canceled": 0, "lost": 0,
        "lost_unknown": 0, "lost_stuck": 0, "failed_reasons": collections.Counter(), "lost_examples": [],
        "cancel_not_canceled": 0,
    }
    done_jobs = {}
    for jid in sorted(state.jobs):
        status, job, body = get_json(state, host, port, f"/api/jobs/{jid}")
        if status == 404 or (status == 200 and job is None):
            res["lost"] += 1
            res["lost_unknown"] += 1
            res["lost_examples"].append({"job_id": jid, "why": f"HTTP {status}", "body": body[:200].decode()})
            continue
        if status != 200:
            res["lost"] += 1
            res["lost_unknown"] += 1
            res["lost_examples"].append({"job_id": jid, "why": f"no answer ({status})"})
            continue
        st = job["status"]
        if st == "done":
            res["completed"] += 1
            done_jobs[jid] = job
        elif st == "failed":
            res["failed"] += 1
            reason = job.get("error") or ""
            res["failed_reasons"][reason[:160] or "(empty error)"] += 1
            if not reason:
                state.anomaly("failed_without_reason", job_id=jid)
        elif st == "canceled":
            res["canceled"] += 1
        else:
            res["lost"] += 1
            res["lost_stuck"] += 1
            res["lost_examples"].append({"job_id": jid, "why": f"stuck {st} after the drain"})
        if state.jobs[jid]["cancel_status"] == "canceled" and st != "canceled":
            res["cancel_not_canceled"] += 1
            state.anomaly("canceled_then_other", job_id=jid, final=st)

    # The whole gallery.
    gallery = []
    page = 1
    while True:
        status, data, _ = get_json(state, host, port, f"/api/images?page={page}&per_page=200")
        if status != 200 or not data or not data.get("images"):
            break
        gallery.extend(data["images"])
        if len(gallery) >= data.get("total", 0):
            break
        page += 1
    per_job = collections.Counter(int(img["job_id"]) for img in gallery)
    dup_rows = {j: n for j, n in per_job.items() if n > 1}
    res["gallery_images"] = len(gallery)
    res["duplicate_gallery_rows"] = sum(n - 1 for n in dup_rows.values())
    res["duplicate_examples"] = [{"job_id": j, "images": n} for j, n in list(dup_rows.items())[:20]]

    # Every done job's image: present, a PNG, pointing back at its job.
    bad = []
    gallery_by_id = {int(img["id"]): img for img in gallery}
    for jid, job in done_jobs.items():
        iid = job.get("image_id")
        if iid is None:
            bad.append({"job_id": jid, "why": "done without image_id"})
            continue
        img = gallery_by_id.get(int(iid))
        if img is None:
            bad.append({"job_id": jid, "image_id": iid, "why": "image not in the gallery"})
        elif int(img["job_id"]) != jid:
            bad.append({"job_id": jid, "image_id": iid, "why": f"image belongs to job {img['job_id']}"})
        a = None
        for i in range(3):
            a = request(state, host, port, "GET", f"/api/images/{iid}/file", timeout=30)
            if a.status is not None:
                break
            time.sleep(1)
        if a.status != 200 or not a.body.startswith(PNG_SIGNATURE):
            bad.append({"job_id": jid, "image_id": iid, "why": f"file: HTTP {a.status}, {len(a.body)} bytes"})
    res["done_image_missing_or_bad"] = len(bad)
    res["done_image_examples"] = bad[:20]
    res["duplicated"] = res["duplicate_gallery_rows"] + len(bad)

    # Gallery rows of jobs that are not done (they would be orphans).
    res["gallery_rows_of_unfinished_or_unknown_jobs"] = sum(
        1 for img in gallery if int(img["job_id"]) in state.jobs and int(img["job_id"]) not in done_jobs)

    # Jobs the server has that no client got a 201 for: submits whose answer was lost to a kill.
    max_known = max(state.jobs, default=0)
    status, data, _ = get_json(state, host, port, "/api/jobs?limit=1")
    if status == 200 and data and data["jobs"]:
        max_known = max(max_known, int(data["jobs"][0]["id"]))
    unack = collections.Counter()
    for jid in range(1, max_known + 1):
        if jid in state.jobs:
            continue
        status, job, _ = get_json(state, host, port, f"/api/jobs/{jid}")
        if status == 200 and job:
            unack[job["status"]] += 1
    res["unacknowledged_jobs"] = sum(unack.values())
    res["unacknowledged_by_status"] = dict(unack)

    # PNG files on disk that no gallery row names (a kill between writing the file and recording it).
    images_dir = os.path.join(data_dir, "images")
    files = [f for f in os.listdir(images_dir)] if os.path.isdir(images_dir) else []
    res["image_files_on_disk"] = len(files)
    res["orphan_files_on_disk"] = max(0, len(files) - len(gallery))
    res["failed_reasons"] = dict(res["failed_reasons"].most_common())
    return res


# ----------------------------------------------------------------------------------------------------------------
# Main


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ember", default=os.path.join(REPO, "target", "debug", "ember"))
    ap.add_argument("--model", default=os.path.join(REPO, "tests", "fixtures", "tiny-sd.safetensors"))
    ap.add_argument("--init-image", default=os.path.join(REPO, "tests", "fixtures", "init-64x96.png"))
    ap.add_argument("--host", default="127.0.0.1", help="loopback address only")
    ap.add_argument("--port", type=int, default=0, help="0: a free port, kept across restarts")
    ap.add_argument("--duration", type=float, default=600, help="seconds of load (default 600)")
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--max-requests", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--kill-min", type=float, default=20, help="seconds between kills, at least")
    ap.add_argument("--kill-max", type=float, default=60, help="seconds between kills, at most")
    ap.add_argument("--no-chaos", action="store_true", help="never kill the server during the load")
    ap.add_argument("--max-pending", type=int, default=16, help="back-pressure: unfinished jobs before submits pause")
    ap.add_argument("--think-ms", type=float, default=100, help="each client sleeps up to this between requests")
    ap.add_argument("--timeout", type=float, default=10, help="per-request timeout, seconds")
    ap.add_argument("--drain-timeout", type=float, default=300)
    ap.add_argument("--workdir", help="data dir and logs (default: a fresh temp dir, kept)")
    ap.add_argument("--log-level", default="info", help="EMBER_LOG for the server (unless set)")
    ap.add_argument("--json", help="write the figures to this file")
    args = ap.parse_args()

    try:
        if not ipaddress.ip_address(args.host).is_loopback:
            raise ValueError
    except ValueError:
        print(f"refusing --host {args.host}: the soak runs against a loopback address only", file=sys.stderr)
        return 2
    for path in (args.ember, args.model, args.init_image):
        if not os.path.exists(path):
            print(f"missing: {path} (build with `cargo build -p ember-cli`)", file=sys.stderr)
            return 2

    rng = random.Random(args.seed)
    work = args.workdir or tempfile.mkdtemp(prefix="ember-soak-")
    os.makedirs(work, exist_ok=True)
    data_dir = os.path.join(work, "data")
    # A private copy: a rebuild of target/debug/ember during the soak must not change the binary under test.
    binary = os.path.join(work, "ember")
    shutil.copy2(args.ember, binary)
    with open(args.init_image, "rb") as f:
        init_png = f.read()

    state = State()
    state.max_requests = args.max_requests
    server = Server(binary, os.path.abspath(args.model), args.host, args.port, data_dir, work, args.log_level)
    atexit.register(server._kill_proc)

    def on_signal(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_signal)
    print(f"soak: workdir {work}", flush=True)

    threads = []
    result: dict = {}
    interrupted = False
    t_begin = time.time()
    try:
        server.start(state)
        port_ref = [server.port]
        status, data, _ = get_json(state, args.host, server.port, "/api/samplers")
        if status == 200:
            state.samplers = data["samplers"]
        print(f"soak: server on {args.host}:{server.port}, {args.clients} clients, {args.duration:.0f} s", flush=True)

        threads = [threading.Thread(target=client, args=(i, state, args, args.host, port_ref, init_png), daemon=True)
                   for i in range(args.clients)]
        threads.append(threading.Thread(target=rss_sampler, args=(state, server), daemon=True))
        for t in threads:
            t.start()

        # The chaos loop (in the main thread, which owns the server process).
        deadline = time.monotonic() + args.duration
        next_kill = time.monotonic() + rng.uniform(args.kill_min, args.kill_max)
        while time.monotonic() < deadline and not state.stop.is_set():
            time.sleep(0.2)
            if not args.no_chaos and time.monotonic() >= next_kill and time.monotonic() < deadline - 5:
                server.kill9(state)
                time.sleep(rng.uniform(0, 2))
                server.start(state)
                print(f"soak: {time.time() - t_begin:6.0f} s  kill -9 #{server.kills}, restarted; "
                      f"{state.requests} requests, {len(state.jobs)} jobs", flush=True)
                next_kill = time.monotonic() + rng.uniform(args.kill_min, args.kill_max)
        load_s = time.time() - t_begin
        state.stop.set()
        for t in threads:
            t.join(args.timeout + 5)

        # Final restart, drain, accounting.
        server.kill9(state)
        server.start(state)
        drained, drain_s = drain(state, args.host, server.port, args.drain_timeout)
        server.sample_rss()
        result = account(state, args.host, server.port, data_dir)
        result.update(drained=drained, drain_s=round(drain_s, 1), load_s=round(load_s, 1))
    except KeyboardInterrupt:
        interrupted = True
        state.stop.set()
    finally:
        state.stop.set()
        server.stop()

    # Figures.
    lat = sorted(state.list_latencies)
    q = statistics.quantiles(lat, n=100, method="inclusive") if len(lat) >= 2 else [float("nan")] * 99
    by_status = collections.Counter()
    per_kind = collections.defaultdict(collections.Counter)
    for (kind, outcome), n in state.counts.items():
        by_status[outcome] += n
        per_kind[kind][outcome] += n
    fivexx = sum(n for s, n in by_status.items() if s.isdigit() and int(s) >= 500)
    unexpected_5xx = sum(n for s, n in by_status.items() if s.isdigit() and int(s) >= 500 and s != "503")
    # A 503 is expected only while storage is broken, which this soak does not cause: count them too.
    unexpected_5xx += by_status.get("503", 0)
    summary = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "args": {k: v for k, v in vars(args).items()},
        "workdir": work,
        "interrupted": interrupted,
        "requests": state.requests,
        "restarts_kill9": server.kills,
        "server_starts": server.starts,
        "jobs_submitted": len(state.jobs),
        "jobs_completed": result.get("completed"),
        "jobs_failed": result.get("failed"),
        "jobs_failed_reasons": result.get("failed_reasons"),
        "jobs_canceled": result.get("canceled"),
        "jobs_lost": result.get("lost"),
        "jobs_lost_unknown_to_server": result.get("lost_unknown"),
        "jobs_lost_stuck": result.get("lost_stuck"),
        "lost_examples": result.get("lost_examples"),
        "duplicated_images": result.get("duplicated"),
        "duplicate_gallery_rows": result.get("duplicate_gallery_rows"),
        "done_image_missing_or_bad": result.get("done_image_missing_or_bad"),
        "duplicate_examples": result.get("duplicate_examples"),
        "done_image_examples": result.get("done_image_examples"),
        "gallery_images": result.get("gallery_images"),
        "gallery_rows_of_unfinished_jobs": result.get("gallery_rows_of_unfinished_or_unknown_jobs"),
        "image_files_on_disk": result.get("image_files_on_disk"),
        "orphan_files_on_disk": result.get("orphan_files_on_disk"),
        "unacknowledged_jobs": result.get("unacknowledged_jobs"),
        "unacknowledged_by_status": result.get("unacknowledged_by_status"),
        "ambiguous_submits": state.ambiguous_submits,
        "drained": result.get("drained"),
        "drain_s": result.get("drain_s"),
        "load_s": result.get("load_s"),
        "http_5xx": fivexx,
        "unexpected_5xx": unexpected_5xx,
        "conn_errors_server_down": by_status.get("conn_error_server_down", 0) + by_status.get("timeout_server_down", 0),
        "conn_errors_while_up": by_status.get("conn_error_while_up", 0),
        "timeouts_while_up": by_status.get("timeout", 0),
        "list_jobs_samples": len(lat),
        "list_jobs_p50_ms": round(q[49] * 1000, 1) if lat else None,
        "list_jobs_p99_ms": round(q[98] * 1000, 1) if lat else None,
        "list_jobs_max_ms": round(lat[-1] * 1000, 1) if lat else None,
        "peak_rss_mib": round(server.peak_rss_kb / 1024, 1),
        "status_histogram": dict(sorted(by_status.items())),
        "per_request": {k: dict(sorted(v.items())) for k, v in sorted(per_kind.items())},
        "anomaly_counts": dict(state.anomaly_counts),
        "anomalies": dict(state.anomalies),
    }
    try:
        with open(server.stderr_path, errors="replace") as f:
            summary["server_stderr_tail"] = f.read().splitlines()[-30:]
    except OSError:
        summary["server_stderr_tail"] = []

    failures = []
    if interrupted:
        failures.append("interrupted")
    if not result.get("drained", False):
        failures.append("not drained")
    for key in ("jobs_lost", "duplicated_images", "unexpected_5xx"):
        if summary[key]:
            failures.append(f"{key}={summary[key]}")
    for key in ("invalid_accepted", "status_changed_after_finish", "canceled_then_other", "failed_without_reason",
                "known_job_404", "image_not_png", "duplicate_job_id", "bad_201_body"):
        if state.anomaly_counts.get(key):
            failures.append(f"{key}={state.anomaly_counts[key]}")
    summary["failures"] = failures
    summary["ok"] = not failures

    rows = [
        ("duration of load (s)", summary["load_s"]), ("clients", args.clients), ("requests", state.requests),
        ("kill -9 + restart", server.kills), ("jobs submitted (201)", summary["jobs_submitted"]),
        ("  completed (done)", summary["jobs_completed"]), ("  failed (with reason)", summary["jobs_failed"]),
        ("  canceled", summary["jobs_canceled"]), ("  LOST", summary["jobs_lost"]),
        ("DUPLICATED images", summary["duplicated_images"]),
        ("  gallery rows for one job > 1", summary["duplicate_gallery_rows"]),
        ("  done job, image missing/bad", summary["done_image_missing_or_bad"]),
        ("unacknowledged jobs (submit answer lost)", summary["unacknowledged_jobs"]),
        ("  submits without an answer", summary["ambiguous_submits"]),
        ("orphan PNG files on disk", summary["orphan_files_on_disk"]),
        ("HTTP 5xx (unexpected)", f"{fivexx} ({unexpected_5xx})"),
        ("conn errors: server down / while up", f"{summary['conn_errors_server_down']} / "
                                                f"{summary['conn_errors_while_up']}"),
        ("timeouts while up", summary["timeouts_while_up"]),
        ("GET /api/jobs p50 / p99 / max (ms)", f"{summary['list_jobs_p50_ms']} / {summary['list_jobs_p99_ms']} / "
                                               f"{summary['list_jobs_max_ms']}  (n={len(lat)})"),
        ("peak RSS of the server (MiB)", summary["peak_rss_mib"]),
        ("final drain (s)", summary["drain_s"]),
    ]
    print("\n== soak summary " + "=" * 50)
    for k, v in rows:
        print(f"{k:<42} {v}")
    if summary["jobs_failed_reasons"]:
        print("failure reasons:")
        for reason, n in summary["jobs_failed_reasons"].items():
            print(f"  {n:6}  {reason}")
    if state.anomaly_counts:
        print("anomalies:", dict(state.anomaly_counts))
    print("result:", "OK" if summary["ok"] else "FAIL " + ", ".join(failures))
    print(f"server logs: {server.stderr_path}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=2, default=str)
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())

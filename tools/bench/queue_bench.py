#!/usr/bin/env python3
"""Throughput of the PostgreSQL queue with 1, 2 and 3 `ember worker` processes, and the queue's overhead per job.

Runs `ember serve --workers 0` (a front-end only) and N workers on the tiny model, submits JOBS txt2img jobs at once,
and times from the first submit to the last job done. The overhead per job is what each worker measured besides
denoising (claim, reading uploads, progress writes, storing the PNG and recording it: `jobs.overhead_ms`).

Needs the services of tools/services/start.sh (source its env file) and a built binary:

    tools/services/start.sh /tmp/svc && source /tmp/svc/env
    cargo build --release -p ember-cli
    python3 tools/bench/queue_bench.py --ember target/release/ember [--jobs 30] [--workers 1,2,3] [--local-images]

Standard library only; psql (PostgreSQL's client) reads the overhead column.
"""

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid

MODEL = "tests/fixtures/tiny-sd.safetensors"


def http(method, url, body=None, headers=None):
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read() or b"null")


def submit(base, params):
    boundary = uuid.uuid4().hex
    body = (
        f"--{boundary}\r\nContent-Disposition: form-data; name=\"params\"\r\n"
        f"Content-Type: application/json\r\n\r\n{json.dumps(params)}\r\n--{boundary}--\r\n"
    ).encode()
    return http("POST", f"{base}/api/jobs", body, {"Content-Type": f"multipart/form-data; boundary={boundary}"})


def psql(url, sql):
    out = subprocess.run(["psql", url, "-At", "-c", sql], check=True, capture_output=True, text=True)
    return out.stdout.strip()


def run(args, workers, admin_url, log_dir):
    database = f"ember_bench_{workers}_{os.getpid()}"
    psql(admin_url, f"CREATE DATABASE {database}")
    queue = admin_url.rsplit("/", 1)[0] + "/" + database
    images = (os.path.join(log_dir, database, "images") if args.local_images
              else f"s3://{os.environ['EMBER_TEST_S3_BUCKET']}/bench-{database}")
    procs = []
    try:
        serve = subprocess.Popen(
            [args.ember, "serve", "--queue", queue, "--images", images, "--workers", "0", "--model", MODEL,
             "--port", "0", "--data-dir", os.path.join(log_dir, database)],
            stdout=subprocess.PIPE, stderr=open(os.path.join(log_dir, f"{database}.serve.log"), "w"), text=True)
        procs.append(serve)
        line = serve.stdout.readline()
        base = "http://" + re.search(r"http://([^/]+)/", line).group(1)
        for i in range(workers):
            log = open(os.path.join(log_dir, f"{database}.w{i + 1}.log"), "w")
            worker = subprocess.Popen(
                [args.ember, "worker", "--queue", queue, "--images", images, "--model", MODEL,
                 "--name", f"bench{i + 1}"], stderr=log)
            procs.append(worker)
        deadline = time.time() + 120
        while len([w for w in http("GET", f"{base}/api/workers")["workers"] if w["alive"]]) < workers:
            if time.time() > deadline:
                sys.exit("the workers did not start; see " + log_dir)
            time.sleep(0.2)
        started = time.time()
        ids = [submit(base, {"prompt": f"a fox {i}", "width": 64, "height": 64, "steps": args.steps, "seed": i})["id"]
               for i in range(args.jobs)]
        while True:
            jobs = http("GET", f"{base}/api/jobs?limit=500")["jobs"]
            done = [j for j in jobs if j["id"] in ids and j["status"] in ("done", "failed", "canceled")]
            if len(done) == len(ids):
                break
            if time.time() > started + 600:
                sys.exit("the jobs did not finish in 10 minutes")
            time.sleep(0.05)
        elapsed = time.time() - started
        failed = [j for j in done if j["status"] != "done"]
        if failed:
            sys.exit(f"{len(failed)} jobs did not succeed: {failed[0]['error']}")
        retried = [j["id"] for j in done if j["attempts"] != 1]
        if retried:
            sys.exit(f"jobs {retried} ran more than once")
        overheads = [float(v) for v in psql(queue, "SELECT overhead_ms FROM jobs ORDER BY id").split()]
        per_worker = psql(queue, "SELECT worker, count(*) FROM jobs GROUP BY worker ORDER BY worker").replace("\n", ", ")
        return {
            "workers": workers,
            "jobs": args.jobs,
            "seconds": elapsed,
            "jobs_per_s": args.jobs / elapsed,
            "overhead_ms_median": statistics.median(overheads),
            "overhead_ms_p90": sorted(overheads)[int(0.9 * (len(overheads) - 1))],
            "overhead_ms_max": max(overheads),
            "per_worker": per_worker,
        }
    finally:
        for proc in reversed(procs):
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
        psql(admin_url, f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ember", default="target/release/ember")
    parser.add_argument("--jobs", type=int, default=30)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--workers", default="1,2,3")
    parser.add_argument("--local-images", action="store_true", help="images in a local folder instead of S3")
    args = parser.parse_args()
    admin_url = os.environ["EMBER_TEST_POSTGRES"]
    with tempfile.TemporaryDirectory() as log_dir:
        results = [run(args, int(n), admin_url, log_dir) for n in args.workers.split(",")]
    base = results[0]["jobs_per_s"]
    print(f"{'workers':>7} {'jobs':>5} {'seconds':>8} {'jobs/s':>7} {'speed-up':>8} "
          f"{'overhead ms (median / p90 / max)':>34}  jobs per worker")
    for r in results:
        print(f"{r['workers']:>7} {r['jobs']:>5} {r['seconds']:>8.2f} {r['jobs_per_s']:>7.2f} "
              f"{r['jobs_per_s'] / base:>7.2f}x {r['overhead_ms_median']:>14.1f} / {r['overhead_ms_p90']:>5.1f} / "
              f"{r['overhead_ms_max']:>5.1f}  {r['per_worker']}")
    print(json.dumps(results))


if __name__ == "__main__":
    main()

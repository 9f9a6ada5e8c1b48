#!/usr/bin/python3
"""Load generator for `lora serve` (python3 standard library only: threads + http.client).

N streams (threads), each with ONE keep-alive connection (so never more than N connections
at once; a connection that breaks is replaced, never added to), each sending
--requests-per-stream streamed greedy completions one after the other; stream i uses adapter
i mod len(--adapters) ("base", or an empty list, = the base model). Every request asks for
exactly --max-tokens tokens (ignore_eos) and the usage chunk (stream_options.include_usage).
Measured per request: time to first token (TTFT: request sent -> first chunk with text) and
per-token latency (the gaps between text chunks after the first). Printed: aggregate
generated tokens/s over the run's wall time, p50/p99 TTFT, p50/p99 per-token latency; with
--single, the same for one stream alone first (the figure to compare with).

How bench/bench.sh should call it (the server must allow the streams: --max-batch >= N for
them all to decode together, and --max-conn-per-client > N, default 16, as every stream
comes from 127.0.0.1):

    ./lora serve --model M --adapter a=A --adapter b=B --port 0 --max-batch 8 \\
        --max-conn-per-client 64 > serve.log 2>&1 &
    port=$(sed -nE 's/.*listening on http:\\/\\/127\\.0\\.0\\.1:([0-9]+).*/\\1/p' serve.log)
    /usr/bin/python3 bench/serve_load.py --url http://127.0.0.1:$port --streams 8 \\
        --adapters a,b --max-tokens 64 --requests-per-stream 4 --single --json serve_load.json
    kill %1

--json FILE writes {"streams", "max_tokens", "requests", "errors", "wall_s", "tokens",
"tok_s", "ttft_ms": {"p50","p99"}, "token_ms": {"p50","p99"}, "single": {same keys}|null};
the exit status is non-zero when any request failed.
"""
import argparse
import http.client
import json
import sys
import threading
import time
import urllib.parse

PROMPT = ("Below is an instruction that describes a task. Write a response that appropriately "
          "completes the request.\n\n### Instruction:\nName the capital city of France.\n\n### Response:\n")


def percentile(xs, p):
    if not xs:
        return float("nan")
    xs = sorted(xs)
    k = (len(xs) - 1) * p / 100.0
    lo = int(k)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


class Stream(threading.Thread):
    def __init__(self, host, port, model, args, start_evt):
        super().__init__(daemon=True)
        self.host, self.port, self.model, self.args, self.start_evt = host, port, model, args, start_evt
        self.ttft, self.gaps, self.tokens, self.errors = [], [], 0, []
        self.conn = None

    def connect(self):
        if self.conn is None:
            self.conn = http.client.HTTPConnection(self.host, self.port, timeout=self.args.timeout)
        return self.conn

    def one(self):
        body = {"prompt": self.args.prompt, "max_tokens": self.args.max_tokens, "temperature": 0,
                "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}}
        if self.model and self.model != "base":
            body["model"] = self.model
        conn = self.connect()
        t0 = time.perf_counter()
        conn.request("POST", "/v1/completions", body=json.dumps(body), headers={"Content-Type": "application/json"})
        r = conn.getresponse()
        if r.status != 200:
            raise RuntimeError("HTTP %d: %s" % (r.status, r.read()[:300].decode(errors="replace")))
        first = last = None
        n_tokens, done = None, False
        for line in r:  # one "data: ..." line per event
            if not line.startswith(b"data: "):
                continue
            if line.startswith(b"data: [DONE]"):
                done = True
                continue
            ev = json.loads(line[6:])
            if "error" in ev:
                raise RuntimeError("stream error: %s" % ev["error"].get("message"))
            if ev.get("usage"):
                n_tokens = ev["usage"]["completion_tokens"]
            for ch in ev.get("choices", []):
                if ch.get("text"):
                    now = time.perf_counter()
                    if first is None:
                        first = now
                        self.ttft.append(now - t0)
                    else:
                        self.gaps.append(now - last)
                    last = now
        if not done:
            raise RuntimeError("stream ended without [DONE]")
        self.tokens += n_tokens if n_tokens is not None else 0

    def run(self):
        self.start_evt.wait()
        for _ in range(self.args.requests_per_stream):
            try:
                self.one()
            except Exception as ex:  # a broken connection is replaced: still one per stream
                self.errors.append(repr(ex))
                if self.conn is not None:
                    self.conn.close()
                    self.conn = None
        if self.conn is not None:
            self.conn.close()


def run(host, port, models, n_streams, args):
    start = threading.Event()
    streams = [Stream(host, port, models[i % len(models)], args, start) for i in range(n_streams)]
    for s in streams:
        s.start()
    t0 = time.perf_counter()
    start.set()
    for s in streams:
        s.join()
    wall = time.perf_counter() - t0
    ttft = [x for s in streams for x in s.ttft]
    gaps = [x for s in streams for x in s.gaps]
    tokens = sum(s.tokens for s in streams)
    errors = [e for s in streams for e in s.errors]
    return {"streams": n_streams, "max_tokens": args.max_tokens, "requests": n_streams * args.requests_per_stream,
            "errors": len(errors), "error_examples": errors[:3], "wall_s": round(wall, 3), "tokens": tokens,
            "tok_s": round(tokens / wall, 2) if wall > 0 else 0.0,
            "ttft_ms": {"p50": round(1e3 * percentile(ttft, 50), 2), "p99": round(1e3 * percentile(ttft, 99), 2)},
            "token_ms": {"p50": round(1e3 * percentile(gaps, 50), 3), "p99": round(1e3 * percentile(gaps, 99), 3)}}


def line(label, r):
    return ("%-14s %8.1f tok/s  (%d tokens in %.2f s, %d requests, %d errors)  TTFT p50 %.1f ms p99 %.1f ms  "
            "per-token p50 %.2f ms p99 %.2f ms" % (label, r["tok_s"], r["tokens"], r["wall_s"], r["requests"],
                                                  r["errors"], r["ttft_ms"]["p50"], r["ttft_ms"]["p99"],
                                                  r["token_ms"]["p50"], r["token_ms"]["p99"]))


def main():
    ap = argparse.ArgumentParser(description="streamed-completion load on a `lora serve` server")
    ap.add_argument("--url", default="http://127.0.0.1:8080")
    ap.add_argument("--streams", type=int, default=8, help="concurrent streams = connections at most")
    ap.add_argument("--adapters", default="", help="comma-separated model names, round-robin over streams "
                                                   "(\"base\" or empty: the base)")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--requests-per-stream", type=int, default=4)
    ap.add_argument("--prompt", default=PROMPT)
    ap.add_argument("--single", action="store_true", help="first the same with one stream, for comparison")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds without data before a request fails")
    ap.add_argument("--json", help="write the figures to this file")
    args = ap.parse_args()
    if args.streams < 1 or args.requests_per_stream < 1 or args.max_tokens < 1:
        ap.error("--streams, --requests-per-stream and --max-tokens must be >= 1")
    u = urllib.parse.urlparse(args.url)
    if u.scheme != "http" or not u.hostname:
        ap.error("--url must be http://HOST:PORT")
    host, port = u.hostname, u.port or 80
    models = [m for m in args.adapters.split(",") if m] or ["base"]
    print("serve_load: %s, %d stream%s x %d requests, %d tokens each, models %s" %
          (args.url, args.streams, "" if args.streams == 1 else "s", args.requests_per_stream, args.max_tokens,
           ",".join(models)), flush=True)
    single = None
    if args.single:
        single = run(host, port, models[:1], 1, args)
        print(line("single stream", single), flush=True)
    res = run(host, port, models, args.streams, args)
    print(line("%d streams" % args.streams, res), flush=True)
    if single and single["tok_s"] > 0:
        print("serve_load: aggregate %.2fx the single-stream rate" % (res["tok_s"] / single["tok_s"]))
    for r in (single, res):
        for e in (r or {}).get("error_examples", []):
            print("serve_load: error: %s" % e, file=sys.stderr)
    if args.json:
        res["single"] = single
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)
    return 1 if res["errors"] or (single and single["errors"]) else 0


if __name__ == "__main__":
    sys.exit(main())

"""A whole self-instruct run to Alpaca's size (52,002 kept instructions) against a loopback server.

    .venv/bin/python bench/bench_generate_52k.py                   # the full run: about a minute on 2 cores
    .venv/bin/python bench/bench_generate_52k.py --target 2000     # a quick check
    .venv/bin/python bench/bench_generate_52k.py --profile prof.out   # and a cProfile of the run

The server is a real HTTP server speaking the OpenAI completions API, started in its own process on
127.0.0.1; it answers at once, so what is measured is the generator's own work. Each reply continues
the prompt's numbered list to item 19 (16 items, as a model asked for 20 tasks after 3 examples would),
written deterministically from the request's prompt and seed:

- an instruction opens with the first one to three words of a real instruction (alpaca_data.json and
  seed_tasks.jsonl, as shipped) and goes on with words drawn by their frequency in those instructions,
  to the length of another real one: realistic length and vocabulary, and almost always distinct;
- 4% are near-copies (one word changed) of one of 1,000 recurring instructions, so the ROUGE-L filter
  has duplicates to drop; the original filters meet their cases too (blacklisted words, short ones);
- inputs and outputs are real ones of the bundled alpaca_data.json (40% of items have an input).

The generator runs in this process through `generate_instruction.generate_instruction_following_data`
with its defaults except the target, `--request_batch_size` (20 prompts: 320 candidates a batch) and
`--num_cpus`. Time spent in ROUGE-L (building the pool and filtering), in journal writes and reads, in
writing regen.json and in waiting for replies is summed by wrapping those functions, in wall time and
in this process's CPU time (which other work on a shared machine disturbs less). Peak RSS is this
process's (the server's is its own).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from benchutil import bundled_instructions, bundled_records, peak_rss_mb, with_machine

NEAR_COPY_SHARE = 0.04  # items that re-use one of the recurring instructions
RECURRING = 1000  # how many recurring instructions there are


class FakeSelfInstructModel:
    """Writes self-instruct replies from the bundled instructions' words; a pure function of (prompt, seed)."""

    def __init__(self):
        instructions = bundled_instructions()
        words = [t.split() for t in instructions]
        self.openers = [" ".join(w[:n]) for w in words for n in (1, 2, 3) if len(w) > n]
        self.vocab = [x for w in words for x in w[1:]]  # by frequency: a word appears as often as in the data
        self.lengths = [len(w) for w in words]
        records = bundled_records()
        self.inputs = [r["input"] for r in records if r["input"]]
        self.outputs = [r["output"] for r in records]

    def instruction(self, rng: random.Random) -> str:
        opener = rng.choice(self.openers)
        n = max(rng.choice(self.lengths) - len(opener.split()), 2)
        text = " ".join([opener] + [rng.choice(self.vocab) for _ in range(n)]).rstrip(".?!:,")
        return text + rng.choice(".....?:")

    def recurring(self, rng: random.Random) -> str:
        words = self.instruction(random.Random(f"recurring:{rng.randrange(RECURRING)}")).split()
        words[rng.randrange(1, len(words))] = rng.choice(self.vocab)
        return " ".join(words)

    def reply(self, prompt: str, seed) -> str:
        m = re.search(r"(\d+)\. Instruction:$", prompt)
        start = int(m.group(1)) if m else 1
        rng = random.Random(hashlib.sha256(f"{seed}:{prompt}".encode()).digest())
        parts = []
        for n in range(start, 20):
            ins = self.recurring(rng) if rng.random() < NEAR_COPY_SHARE else self.instruction(rng)
            inp = rng.choice(self.inputs) if rng.random() < 0.4 else "<noinput>"
            head = f" {ins}" if n == start else f"{n}. Instruction: {ins}"
            parts.append(f"{head}\n{n}. Input:\n{inp}\n{n}. Output:\n{rng.choice(self.outputs)}\n")
        return "###\n".join(parts) + "###\n"


def serve() -> None:
    """Serves /v1/completions on a free loopback port, printed first on stdout, until stdin closes."""
    model = FakeSelfInstructModel()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))) or b"{}")
            prompts = body["prompt"] if isinstance(body["prompt"], list) else [body["prompt"]]
            texts = [model.reply(p, body.get("seed")) for p in prompts]
            n_prompt, n_completion = sum(len(p.split()) for p in prompts), sum(len(t.split()) for t in texts)
            data = json.dumps({
                "id": "cmpl-bench", "object": "text_completion", "created": 0, "model": body.get("model", "bench"),
                "choices": [{"text": t, "index": i, "logprobs": None, "finish_reason": "stop"} for i, t in enumerate(texts)],
                "usage": {"prompt_tokens": n_prompt, "completion_tokens": n_completion, "total_tokens": n_prompt + n_completion},
            }).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    print(server.server_address[1], flush=True)
    sys.stdin.read()  # the bench closes it (or exits) when done


class Timers:
    """Sums the wall time and this process's CPU time spent inside wrapped functions, by name."""

    def __init__(self):
        self.seconds = Counter()
        self.cpu = Counter()

    def wrap(self, owner, attr: str, name: str) -> None:
        fn = getattr(owner, attr)

        @functools.wraps(fn)
        def timed(*a, **kw):
            t, c = time.perf_counter(), time.process_time()
            try:
                return fn(*a, **kw)
            finally:
                self.seconds[name] += time.perf_counter() - t
                self.cpu[name] += time.process_time() - c

        setattr(owner, attr, timed)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", type=int, default=52_002, help="instructions to keep (Alpaca's 52,002)")
    ap.add_argument("--request_batch_size", type=int, default=20, help="prompts per batch (16 candidates each)")
    ap.add_argument("--num_cpus", type=int, default=2, help="threads for the ROUGE-L dedup")
    ap.add_argument("--output_dir", default=None, help="a new folder to keep the run's files in (default: a temporary one, removed)")
    ap.add_argument("--profile", default=None, help="write a cProfile of the run to this file")
    ap.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        return serve()
    if args.output_dir and Path(args.output_dir).exists() and any(Path(args.output_dir).iterdir()):
        ap.error(f"--output_dir {args.output_dir} is not empty (a run there would resume, not start); pass a new folder")

    import generate_instruction
    from alpaca_lib.core import journal, rouge
    from alpaca_lib.generation import regen, runner
    from alpaca_lib.generation.journal import JOURNAL_NAME  # the generator's journal file

    timers = Timers()
    timers.wrap(rouge.RougeLPool, "__init__", "rouge")
    timers.wrap(rouge.RougeLPool, "filter_batch", "rouge")
    timers.wrap(rouge.RougeLPool, "_lcs_matrix", "lcs")  # inside the ROUGE-L time: rapidfuzz's LCS itself
    timers.wrap(journal.Journal, "append", "journal")
    timers.wrap(runner, "read_journal", "journal")
    timers.wrap(regen.RegenFile, "save", "regen")
    timers.wrap(runner, "request_batch", "requests")

    server = subprocess.Popen([sys.executable, __file__, "--serve"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    out = Path(args.output_dir) if args.output_dir else Path(tempfile.mkdtemp(prefix="bench-generate-"))
    try:
        port = int(server.stdout.readline())
        settings = dict(
            output_dir=str(out), num_instructions_to_generate=args.target, model_name="bench-model",
            api_style="completions", base_url=f"http://127.0.0.1:{port}/v1", api_key="none",
            request_batch_size=args.request_batch_size, num_cpus=args.num_cpus, seed=0,
        )
        print(f"data: a fake model writing from the {len(bundled_instructions())} distinct bundled instructions; target "
              f"{args.target:,}; {args.request_batch_size} prompts a batch; num_cpus {args.num_cpus}; "
              f"{os.cpu_count()} cores; load average before: {os.getloadavg()[0]:.2f}", flush=True)
        out.mkdir(parents=True, exist_ok=True)
        log = out / "bench.log"  # the run's own output
        t0, c0 = time.perf_counter(), time.process_time()
        with open(log, "w") as f, contextlib.redirect_stdout(f):
            if args.profile:
                import cProfile

                cProfile.runctx("generate_instruction.generate_instruction_following_data(**settings)",
                                globals(), {"generate_instruction": generate_instruction, "settings": settings},
                                args.profile)
            else:
                generate_instruction.generate_instruction_following_data(**settings)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        rss = peak_rss_mb()
        with open(out / JOURNAL_NAME, "rb") as f:  # the summary is in the last record
            f.seek(max(0, f.seek(0, os.SEEK_END) - 65536))
            summary = json.loads(f.read().splitlines()[-1])["summary"]
        regen_mb = (out / regen.REGEN_NAME).stat().st_size / 1e6
        journal_mb = (out / JOURNAL_NAME).stat().st_size / 1e6
    finally:
        server.stdin.close()
        server.wait(10)
        if not args.output_dir:
            shutil.rmtree(out, ignore_errors=True)
    s, c = timers.seconds, timers.cpu
    print(f"kept {summary['kept']:,} of {summary['candidates']:,} candidates ({summary['raw_items']:,} parsed) in "
          f"{summary['requests']:,} requests; regen.json {regen_mb:.1f} MB, journal {journal_mb:.1f} MB")
    print(f"wall {wall:.1f} s (CPU {cpu:.1f} s): waiting for replies {s['requests']:.1f} s (client and server), "
          f"ROUGE-L {s['rouge']:.1f} s (CPU {c['rouge']:.1f} s, of which the LCS {c['lcs']:.1f} s), journal {s['journal']:.1f} s, "
          f"regen.json {s['regen']:.1f} s; peak RSS {rss:.0f} MB; load average after: {os.getloadavg()[0]:.2f}")
    print(with_machine(f"RESULT kept={summary['kept']} wall_s={wall:.1f} peak_rss_mb={rss:.0f} rouge_s={s['rouge']:.1f} "
          f"journal_s={s['journal']:.1f} regen_write_s={s['regen']:.1f} requests_s={s['requests']:.1f} "
          f"not_requests_s={wall - s['requests']:.1f} cpu_s={cpu:.1f} rouge_cpu_s={c['rouge']:.1f} lcs_cpu_s={c['lcs']:.1f} "
          f"journal_cpu_s={c['journal']:.1f} regen_write_cpu_s={c['regen']:.1f} candidates={summary['candidates']} "
          f"requests={summary['requests']} regen_mb={regen_mb:.0f} journal_mb={journal_mb:.0f}"))


if __name__ == "__main__":
    main()

"""The hostile-input campaign: how requant answers malformed models, tampered saved
directories, bad call inputs, degenerate calibration, CLI misuse and interrupted saves.

What it runs
    `--cases` cases (default 1200), kinds in turn (`requant.tools.hostile_inputs.KINDS`:
    onnx, manifest, call, calibration, cli, interrupt); case i draws every choice from
    a numpy RNG seeded with (seed, i), so any case can be rerun alone
    (`--only I`). Cases run in a child process (`--worker`), one after another; when
    the child dies (a crash: a signal, a segfault in a native library) or a case takes
    longer than `--case-timeout` seconds (a hang), that case counts as "anything
    else" and a new child carries on with the next one.

What it prints
    One markdown table: per kind, the cases and their counts by outcome ("clear error":
    a RequantError with a one-line message and nothing outside the case's output
    directory changed; "correct": it worked and the result checks out against the
    interpreter; "anything else": the rest, crashes and hangs included), a total row,
    the wall time of the campaign and per case; then each "anything else" case with
    its kind, index and what happened. Exit status 1 when any case is "anything
    else".

How to run
    python -m requant.tools.bench.fuzz                       # 1200 cases, seed 0
    python -m requant.tools.bench.fuzz --cases 200 --seed 3  # a quick look
    python -m requant.tools.bench.fuzz --only 417 --seed 0   # one case, in this process
The TVM save the "manifest" cases tamper with needs TVM's compiler; without it those
cases use the ONNX saves only (said on stderr).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

__all__ = ["main", "run_cases", "case_seed"]

logger = logging.getLogger(__name__)

OUTCOMES = ("clear error", "correct", "anything else")


def case_seed(seed: int, index: int) -> int:
    return seed * 1_000_003 + index


def _kind(index: int) -> str:
    from requant.tools.hostile_inputs import KINDS

    return KINDS[index % len(KINDS)]


def _worker(args: argparse.Namespace) -> int:
    """Run cases args.first..args.last, one JSON line before and after each."""
    import warnings

    from requant.tools.hostile_inputs import RandomDraw, new_campaign

    logging.disable(logging.CRITICAL)
    warnings.simplefilter("ignore")
    campaign = new_campaign(args.workdir, tvm=not args.no_tvm)
    for index in range(args.first, args.last):
        print(json.dumps({"start": index}), flush=True)
        started = time.perf_counter()
        outcome = campaign.run(_kind(index), RandomDraw(case_seed(args.seed, index)))
        print(json.dumps({"index": index, "kind": _kind(index), "outcome": outcome.kind,
                          "detail": outcome.detail[:400], "seconds": time.perf_counter() - started}), flush=True)
    return 0


def _spawn(args: argparse.Namespace, first: int, workdir: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "requant.tools.bench.fuzz", "--worker", "--seed", str(args.seed),
           "--first", str(first), "--last", str(args.cases), "--workdir", workdir]
    if args.no_tvm:
        cmd.append("--no-tvm")
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, bufsize=1)


def _read_line(proc: subprocess.Popen, timeout: float) -> str | None:
    """One line from the child, or None when it died or said nothing for `timeout` s."""
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    if not ready:
        return None
    line = proc.stdout.readline()
    return line or None


def run_cases(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every case's record, crashes and hangs included (module docstring)."""
    results: list[dict[str, Any]] = []
    workdir = tempfile.mkdtemp(prefix="requant-fuzz-")
    first = 0
    try:
        while first < args.cases:
            proc = _spawn(args, first, workdir)
            current = None
            while True:
                line = _read_line(proc, args.case_timeout if current is not None else args.case_timeout + 120)
                if line is None:
                    break
                record = json.loads(line)
                if "start" in record:
                    current = record["start"]
                    continue
                results.append(record)
                current = None
                if not args.quiet and len(results) % 100 == 0:
                    print(f"  {len(results)} cases", file=sys.stderr, flush=True)
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            if current is None:
                if proc.returncode != 0 and (not results or results[-1]["index"] < args.cases - 1):
                    raise RuntimeError(f"the fuzz worker failed to start (exit status {proc.returncode})")
                break
            what = f"crashed (exit status {proc.returncode})" if proc.returncode not in (None, -9) else \
                f"hung (no answer in {args.case_timeout} s)"
            results.append({"index": current, "kind": _kind(current), "outcome": "anything else", "detail": what,
                            "seconds": None})
            first = current + 1
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return results


def format_table(results: list[dict[str, Any]], seconds: float) -> list[str]:
    from requant.tools.hostile_inputs import KINDS

    counts = Counter((r["kind"], r["outcome"]) for r in results)
    lines = ["| kind | cases | clear error | correct | anything else |", "|---|---:|---:|---:|---:|"]
    for kind in KINDS:
        row = [counts[(kind, o)] for o in OUTCOMES]
        lines.append(f"| {kind} | {sum(row)} | " + " | ".join(map(str, row)) + " |")
    total = [sum(counts[(k, o)] for k in KINDS) for o in OUTCOMES]
    lines.append(f"| **all** | {len(results)} | " + " | ".join(map(str, total)) + " |")
    per_case = 1e3 * seconds / max(1, len(results))
    lines.append("")
    lines.append(f"{len(results)} cases in {seconds:.1f} s ({per_case:.0f} ms per case, one worker process)")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m requant.tools.bench.fuzz", description=__doc__.split("\n")[0])
    parser.add_argument("--cases", type=int, default=1200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--case-timeout", type=float, default=120.0, help="seconds before a case counts as hung")
    parser.add_argument("--only", type=int, default=None, help="run case ONLY alone, in this process, and show it")
    parser.add_argument("--no-tvm", action="store_true", help="no TVM save among the saved directories")
    parser.add_argument("-q", "--quiet", action="store_true")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--first", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--last", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--workdir", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return _worker(args)
    if args.only is not None:
        from requant.tools.hostile_inputs import RandomDraw, new_campaign

        workdir = tempfile.mkdtemp(prefix="requant-fuzz-")
        try:
            outcome = new_campaign(workdir, tvm=not args.no_tvm).run(_kind(args.only),
                                                                      RandomDraw(case_seed(args.seed, args.only)))
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        print(f"case {args.only} ({_kind(args.only)}): {outcome.kind}: {outcome.detail}")
        return 0 if outcome.kind != "anything else" else 1
    started = time.perf_counter()
    results = run_cases(args)
    seconds = time.perf_counter() - started
    print(f"hostile-input campaign: {args.cases} cases, seed {args.seed}, requant at {Path(__file__).parents[2]}, "
          f"pid {os.getpid()}")
    print()
    for line in format_table(results, seconds):
        print(line)
    others = [r for r in results if r["outcome"] == "anything else"]
    if others:
        print()
        print("anything else:")
        for r in others:
            print(f"  case {r['index']} ({r['kind']}): {r['detail']}")
    return 1 if others else 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Latency of one trace while another session runs a long prompt-set job, with and without the
model-call queue (synapse_core/model/queue.py), on the bundled model.

Three conditions, each with --runs traces of --tokens generated tokens:
  alone         the trace with nothing else running
  no queue      a second thread runs prompt-set jobs (zero-ablating head 0.6) back to back; both threads
                use torch's default threads, so together they ask for twice the cores
  queue         the same, with the queue bounded as the app bounds it (--slots calls at once, cores / slots
                torch threads each); the job re-enters the queue after each forward pass

The alone condition is measured first and last, since on a shared machine the background load moves.
Printed: the median and the worst trace latency, and the job's prompts a second meanwhile.
Figures only; nothing is asserted.

Usage: python benchmarks/model_queue.py [--tokens 8] [--runs 3] [--slots 1]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PROMPT = "The Eiffel Tower is in the city of"
JOB = [f"When {a} and {b} went to the store, {b} gave a drink to | \" {a}\" | \" {b}\""
       for a, b in [("Mary", "John"), ("Tom", "Anna"), ("Lisa", "Mark"), ("Paul", "Sarah")]]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=8)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--slots", type=int, default=1)
    args = parser.parse_args()

    import torch

    from synapse_core.analysis.trace import trace
    from synapse_core.arch.spec import Intervention
    from synapse_core.interventions.promptset import parse_prompt_lines
    from synapse_core.jobs.tasks import run_prompt_set
    from synapse_core.model import queue as model_queue
    from synapse_core.model.loading import load_model

    handle = load_model("bundled", device="cpu", dtype="float32")
    cases = parse_prompt_lines("\n".join(JOB))
    ablation = [Intervention(0, "attn.head", "zero", head=6)]
    default_threads = torch.get_num_threads()

    def traces() -> list[float]:
        times = []
        for _ in range(args.runs):
            t0 = time.perf_counter()
            trace(handle, PROMPT, max_new_tokens=args.tokens)
            times.append(time.perf_counter() - t0)
        return times

    def with_job() -> tuple[list[float], float]:
        stop, done = threading.Event(), [0]

        def job():
            torch.set_num_threads(default_threads)  # each thread as a session's would run it
            while not stop.is_set():
                run_prompt_set(handle, cases, ablation, progress=lambda d, t, m: done.__setitem__(0, done[0] + 1))

        worker = threading.Thread(target=job, daemon=True)
        t0 = time.perf_counter()
        worker.start()
        time.sleep(1.0)  # the job is under way
        times = traces()
        stop.set()
        worker.join()
        return times, done[0] / (time.perf_counter() - t0)

    trace(handle, PROMPT, max_new_tokens=2)  # warm up
    rows = [("alone", traces(), None)]
    rows.append(("no queue", *with_job()))
    queue = model_queue.configure(slots=args.slots)
    rows.append((f"queue ({queue.slots} slot{'s' if queue.slots > 1 else ''}, {queue.threads} threads)",
                 *with_job()))
    model_queue.reset()
    rows.append(("alone, again", traces(), None))  # on a shared machine the load moves: bracket the runs

    print(f"bundled model, cpu float32, {os.cpu_count()} cores; trace of {args.tokens} tokens, {args.runs} runs; "
          f"job: {len(cases)}-prompt sets zero-ablating head 0.6, back to back")
    print(f"{'condition':32} {'median s':>9} {'worst s':>8} {'job prompts/s':>14}")
    for name, times, rate in rows:
        print(f"{name:32} {statistics.median(times):9.2f} {max(times):8.2f} "
              f"{'-' if rate is None else f'{rate:.2f}':>14}")


if __name__ == "__main__":
    main()

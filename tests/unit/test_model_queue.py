"""The model-call queue (model/queue.py): every forward pass of a prepared model takes a slot; with one
slot two threads' passes never overlap, the reported length counts waiting and running calls, and a
long job re-enters the queue between its passes, so a short call asked for meanwhile runs before the
job ends. Orders of events, never timings."""
import threading

import pytest
import torch

from synapse_core.arch.spec import Intervention
from synapse_core.common.errors import BadInput
from synapse_core.hooks.masking import mask_fns
from synapse_core.interventions.ops import forward_last
from synapse_core.interventions.promptset import PromptCase
from synapse_core.jobs.tasks import run_prompt_set
from synapse_core.model import queue as mq


@pytest.fixture
def one_slot():
    q = mq.configure(slots=1, threads=1)
    yield q
    mq.reset()


def wait_until(predicate, what: str):
    for _ in range(2000):
        if predicate():
            return
        threading.Event().wait(0.005)
    raise AssertionError(f"never happened: {what}")


def test_one_slot_serialises_two_threads_and_reports_the_length(one_slot, tiny):
    handle = tiny.make_handle("llama")
    ids = torch.tensor([[2, 5, 9, 14, 3]])
    events, lock = [], threading.Lock()
    inside = threading.Event()
    release = threading.Event()

    def first(x):  # the first thread's pass blocks inside the model until told to go on
        inside.set()
        release.wait(10)

    def record(name):
        def fn(x):
            with lock:
                events.append(name)
        return fn

    def run(name, extra):
        with lock:
            events.append(f"{name} asks")
        forward_last(handle, ids, {(0, "attn.z"): [record(f"{name} in"), *extra], (1, "resid.post"): [record(f"{name} out")]})
        with lock:
            events.append(f"{name} done")

    a = threading.Thread(target=run, args=("a", [first]))
    a.start()
    inside.wait(10)
    assert one_slot.status().length == 1 and one_slot.status().running == 1
    b = threading.Thread(target=run, args=("b", []))
    b.start()
    wait_until(lambda: one_slot.status().waiting == 1, "b waits")
    assert one_slot.status().length == 2 and one_slot.status().running == 1
    assert "b in" not in events
    release.set()
    a.join(10)
    b.join(10)
    # b's pass began only after a's last layer ran ("done" is written after the slot is given back)
    assert events.index("a in") < events.index("a out") < events.index("b in") < events.index("b out")
    assert one_slot.status().length == 0


def test_a_long_job_lets_a_short_call_in_before_it_ends(one_slot, tiny):
    handle = tiny.make_handle("llama")
    cases = tuple(PromptCase(p, "cat") for p in ("the dog sat", "a bird flew", "the sun is", "one two three",
                                                 "red blue green", "hot cold day"))
    events, lock = [], threading.Lock()
    def in_short_pass(x):  # written while the short call holds its slot
        with lock:
            events.append("short call ran")

    short = threading.Thread(target=lambda: forward_last(handle, torch.tensor([[2, 5, 9]]),
                                                         {(1, "resid.post"): [in_short_pass]}))

    def progress(done, total, message):
        with lock:
            events.append(f"job prompt {done}/{total}")
        if done == 1:  # another session asks for one pass while the job is under way
            short.start()
            wait_until(lambda: one_slot.status().length >= 1 or "short call ran" in events, "short call queued")

    result = run_prompt_set(handle, cases, [Intervention(0, "attn.head", "zero", head=1)], progress=progress)
    short.join(10)
    assert len(result.rows) == len(cases)
    assert events.index("short call ran") < events.index(f"job prompt 2/{len(cases)}")  # long before the job's end


def test_a_slot_is_given_back_when_the_pass_raises(one_slot, tiny):
    handle = tiny.make_handle("llama")

    def boom(x):
        raise RuntimeError("site function failed")

    with pytest.raises(RuntimeError, match="site function failed"):
        forward_last(handle, torch.tensor([[2, 5]]), {(0, "attn.z"): [boom]})
    assert one_slot.status().length == 0
    forward_last(handle, torch.tensor([[2, 5]]), mask_fns(()))  # would wait forever on a lost slot
    assert one_slot.status().length == 0


def test_nested_calls_keep_their_slot(one_slot):
    with one_slot.slot():
        with one_slot.slot():  # with one slot, a second take would wait forever
            assert one_slot.status().running == 1
        assert one_slot.status().running == 1
    assert one_slot.status().length == 0


def test_sizes_come_from_the_cpu_count_or_the_setting(monkeypatch):
    monkeypatch.delenv("SYNAPSE_MODEL_SLOTS", raising=False)
    try:
        q = mq.configure(cpus=16)
        assert (q.slots, q.threads) == (4, 4)
        q = mq.configure(cpus=2)
        assert (q.slots, q.threads) == (1, 2)
        monkeypatch.setenv("SYNAPSE_MODEL_SLOTS", "3")
        q = mq.configure(cpus=12)
        assert (q.slots, q.threads) == (3, 4)
        monkeypatch.setenv("SYNAPSE_MODEL_SLOTS", "many")
        with pytest.raises(BadInput, match="SYNAPSE_MODEL_SLOTS 'many'"):
            mq.configure()
        with pytest.raises(BadInput, match="slots 0"):
            mq.ModelQueue(0)
    finally:
        mq.reset()


def test_the_default_queue_is_unbounded():
    q = mq.model_queue()
    assert q.slots is None
    seen = []

    def other():
        with q.slot():
            seen.append(q.status().running)

    with q.slot():
        thread = threading.Thread(target=other)  # a second thread is not held back
        thread.start()
        thread.join(5)
        assert seen == [2]

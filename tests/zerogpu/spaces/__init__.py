"""A stand-in for Hugging Face's `spaces` package on ZeroGPU, for tests on a machine with no GPU.

It keeps the contract of `spaces.GPU` on a generator function as spaces 0.51.3 implements it
(`spaces/zero/wrappers.py`, `generator_function_wrapper`):
- the call runs in a worker process forked (fork start method) on first use and kept warm: an idle
  worker takes the next call, a busy one makes the next call fork another;
- the arguments are pickled into the worker, and every value it yields is pickled back;
- a `gr.Error` raised in the worker is raised again in the caller; any other exception becomes
  `gr.Error(<its class name>)` with the title "ZeroGPU worker error";
- closing the caller's generator sets a stop event, and the worker closes the task's generator
  after its next yield; the worker is idle again once the task has ended;
- `duration` (seconds, or a function of the call's arguments) is evaluated in the caller;
- the caller's gradio request (`LocalContext.request`: spaces charges the call to the quota of the
  visitor its X-IP-Token header names; there is none outside a gradio event) is logged with each call;
- without SPACES_ZERO_GPU in the environment, `GPU` returns the function as it is.

Each call is logged as JSON lines to $ZEROGPU_EMULATION_LOG (worker pid, duration, how it ended,
the last value yielded, pickled) for tests to read.
"""

from __future__ import annotations

import base64
import inspect
import json
import multiprocessing
import os
import pickle
import queue
import threading
import traceback
from functools import partial, wraps

import gradio as gr
from gradio.context import LocalContext

_fork = multiprocessing.get_context("fork")
_forked = False  # True in a worker: a decorated function called there runs directly
_END = "end"


def _log(**fields) -> None:
    path = os.environ.get("ZEROGPU_EMULATION_LOG")
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(fields) + "\n")


class _Worker:
    def __init__(self, task):
        self.args = _fork.SimpleQueue()
        self.results = _fork.SimpleQueue()
        self.stop = _fork.Event()
        self.process = _fork.Process(target=_serve, args=(task, self.args, self.results, self.stop), daemon=True)
        self.process.start()


def _serve(task, args, results, stop) -> None:
    global _forked
    _forked = True
    while True:
        call_args, call_kwargs = args.get()
        stop.clear()
        generator, yielded, last, ended = task(*call_args, **call_kwargs), 0, None, "finished"
        try:
            while True:
                try:
                    value = next(generator)
                except StopIteration:
                    break
                if stop.is_set():
                    generator.close()
                    ended = "stopped"
                    break
                results.put(("ok", value))
                yielded, last = yielded + 1, value
        except Exception as e:
            ended = "raised"
            if isinstance(e, gr.Error):
                results.put(("gradio_error", e))
            else:
                results.put(("error", type(e).__name__, traceback.format_exc()))
        _log(event="end", pid=os.getpid(), ended=ended, yielded=yielded,
             last=base64.b64encode(pickle.dumps(last)).decode())
        results.put((_END,))


def _generator_wrapper(task, duration):
    idle: list[_Worker] = []
    lock = threading.Lock()

    @wraps(task)
    def gradio_handler(*args, **kwargs):
        if _forked:
            yield from task(*args, **kwargs)
            return
        seconds = duration(*args, **kwargs) if callable(duration) else duration
        with lock:
            worker = next((w for w in idle if w.process.is_alive()), None)
            if worker is not None:
                idle.remove(worker)
        if worker is None:
            worker = _Worker(task)
            _log(event="fork", pid=worker.process.pid)
        request = LocalContext.request.get(None)  # spaces charges the call to its X-IP-Token header's visitor
        _log(event="call", pid=worker.process.pid, duration=seconds, request=request is not None,
             ip_token=None if request is None else request.headers.get("x-ip-token"))
        worker.args.put((args, kwargs))  # pickled here: an unpicklable argument fails the call

        received: queue.Queue = queue.Queue()

        def drain():  # reads to the end even when the caller has stopped listening
            while True:
                result = worker.results.get()
                received.put(result)
                if result[0] != "ok":
                    while result[0] != _END:
                        result = worker.results.get()
                    with lock:
                        idle.append(worker)
                    return

        threading.Thread(target=drain, daemon=True).start()
        while True:
            result = received.get()
            if result[0] == "ok":
                try:
                    yield result[1]
                except GeneratorExit:
                    worker.stop.set()
                    raise
            elif result[0] == "gradio_error":
                raise result[1]
            elif result[0] == "error":
                print(result[2])
                raise gr.Error(result[1], title="ZeroGPU worker error", print_exception=False)
            else:
                return

    return gradio_handler


def GPU(task=None, *, duration=None, size=None, **kwargs):  # noqa: N802 - spaces' name
    if task is None:
        return partial(GPU, duration=duration, size=size)
    if not os.environ.get("SPACES_ZERO_GPU"):
        return task
    if not inspect.isgeneratorfunction(task):
        raise NotImplementedError("this stand-in covers generator functions, which is what the app decorates")
    return _generator_wrapper(task, duration)

"""A gate around every call of a model: `enter()` before its forward pass, `exit()` after it, even
when the pass raises. The model-call queue (model/queue.py) uses it so that every forward pass, from
any page, job or command, takes a slot; registered here because hooks are registered in this layer
only. The hooks are permanent, like the attention function install_dispatch sets.
"""
from __future__ import annotations

from collections.abc import Callable

from torch import nn


def gate_calls(model: nn.Module, enter: Callable[[], None], exit: Callable[[], None]) -> None:
    """Call enter() before and exit() after each call of the model's top-level forward."""
    model.register_forward_pre_hook(lambda module, args: enter())
    model.register_forward_hook(lambda module, args, output: exit(), always_call=True)

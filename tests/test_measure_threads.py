"""Measurement never disturbs another thread: no hooks fire in other threads' forwards, outputs stay
bit-identical, the shared model is untouched, and every measurement runs at the thread count it set."""

from __future__ import annotations

import threading

import torch
from torch import nn

from nnlab.measure import count_macs, measure_latency
from nnlab.threads import torch_threads
from nnlab.models.registry import DemoCNN, model_hash


def _hooks(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_mac_counting_and_latency_do_not_touch_other_threads():
    gen = torch.Generator().manual_seed(0)
    shared = DemoCNN(1, 10, (28, 28)).eval()
    x = torch.randn(16, 1, 28, 28, generator=gen)
    with torch.inference_mode():
        alone = shared(x).clone()
    before = model_hash(shared)
    expected_macs = count_macs(shared, (1, 28, 28))

    fired: list[str] = []

    def probe() -> None:
        """What the forwarding thread sees: global module hooks or a dispatch mode are someone else's."""
        from torch.utils._python_dispatch import _get_current_dispatch_mode_stack

        g = nn.modules.module
        n_hooks = len(g._global_forward_pre_hooks) + len(g._global_forward_hooks)
        if n_hooks or _get_current_dispatch_mode_stack():
            fired.append(f"{n_hooks} global hooks, modes {_get_current_dispatch_mode_stack()}")

    stop = threading.Event()
    errors: list[str] = []
    seen_threads: list[tuple[int, int]] = []
    macs_seen: list[int] = []

    def measurer() -> None:
        try:
            n = 0
            while not stop.is_set() or n < 3:
                macs_seen.append(count_macs(shared, (1, 28, 28)))
                want = 1 + n % 2
                lat = measure_latency(shared, (1, 28, 28), (1,), threads=want, rounds=1)
                seen_threads.append((want, lat[1].threads))
                with torch_threads(want) as got:
                    seen_threads.append((want, got if torch.get_num_threads() == want else -1))
                n += 1
        except Exception as exc:  # noqa: BLE001
            errors.append(repr(exc))

    outs: list[torch.Tensor] = []

    def forwarder() -> None:
        for _ in range(30):
            probe()
            with torch.inference_mode():
                outs.append(shared(x).clone())
            probe()

    t1 = threading.Thread(target=measurer, name="measure")
    t2 = threading.Thread(target=forwarder, name="fwd")
    t1.start()
    t2.start()
    t2.join()
    stop.set()
    t1.join()
    assert not errors, errors
    assert not fired, fired
    assert len(outs) == 30 and all(torch.equal(o, alone) for o in outs)
    assert _hooks(shared) == 0
    assert model_hash(shared) == before and not shared.training
    assert macs_seen and set(macs_seen) == {expected_macs}
    assert seen_threads and all(want == got for want, got in seen_threads)


def test_count_macs_leaves_train_mode_and_device_alone():
    m = DemoCNN(1, 10, (28, 28)).train()
    count_macs(m, (1, 28, 28))
    assert m.training

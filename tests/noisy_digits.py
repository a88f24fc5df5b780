"""Digits with some training labels flipped, as an ImageFolder, with its demo model and data report stored in the
suite's workspace: something for the label-error gallery to show (AppTest and the browser)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

FLIP_FRACTION = 0.05
LEAKED = 3  # training images also copied into the test split (near-duplicates for the leakage gallery)


@dataclass
class NoisyDigits:
    """The folder, its dataset, the demo model's id, and which training samples have a flipped label."""

    path: Path
    data: object
    model_id: str
    flipped: dict[int, tuple[int, int]]  # train index in the folder dataset → (true label, given label)
    leaked: dict[int, int]  # test index of each copied image → train index of its original


def make(root: Path, seed: int = 0) -> NoisyDigits:
    """Write the folder (once), train its demo model (a few epochs, once) and run the data checks (once)."""
    from diagnostics import tasks as dtasks  # noqa: F401 - the data-checks job kind
    from nnlab.base import demo_id, ensure_demo
    from nnlab.data.sets import load_digits
    from nnlab.jobs import manager as jobs
    from nnlab.jobs import refs
    from nnlab.workspace import Workspace

    digits = load_digits()
    x, y = digits.x_train.numpy(), digits.y_train.numpy()
    g = np.random.default_rng(seed)
    flip = np.sort(g.choice(len(y), int(round(FLIP_FRACTION * len(y))), replace=False))
    given = y.copy()
    given[flip] = (y[flip] + g.integers(1, 10, len(flip))) % 10  # a different class, never the true one
    folder = root / "noisy-digits"
    marker = folder / ".complete"
    if not marker.exists():
        for split, xs, ys in (("train", x, given), ("test", digits.x_test.numpy(), digits.y_test.numpy())):
            for c in range(10):
                (folder / split / str(c)).mkdir(parents=True, exist_ok=True)
            for i, (im, lab) in enumerate(zip(xs, ys)):
                Image.fromarray(im[0], mode="L").save(folder / split / str(int(lab)) / f"{i:05d}.png")
        for i in range(LEAKED):  # sorted after the digits' own test files of the class ("d" > "0")
            Image.fromarray(x[i, 0], mode="L").save(folder / "test" / str(int(given[i])) / f"dup{i}.png")
        marker.write_text("ok")
    # the loader reads class folders in order and files sorted by name: rebuild that order
    order = [(int(c), int(p.stem)) for c in range(10)
             for p in sorted((folder / "train" / str(c)).glob("*.png"))]
    flipped = {pos: (int(y[i]), c) for pos, (c, i) in enumerate(order) if i in set(flip.tolist())}
    test_order = [p.name for c in range(10) for p in sorted((folder / "test" / str(c)).glob("*.png"))]
    train_pos = {i: pos for pos, (_, i) in enumerate(order)}
    leaked = {test_order.index(f"dup{i}.png"): train_pos[i] for i in range(LEAKED)}
    ref = refs.data_ref("imagefolder", str(folder))
    data = refs.load_data(ref)
    ws = Workspace()
    old = os.environ.get("NNLAB_DEMO_EPOCHS")
    os.environ["NNLAB_DEMO_EPOCHS"] = "1"  # 6 epochs on this small set: the flipped labels are not memorised yet
    try:
        ensure_demo(data, ws)
    finally:
        if old is None:
            os.environ.pop("NNLAB_DEMO_EPOCHS")
        else:
            os.environ["NNLAB_DEMO_EPOCHS"] = old
    model_id = demo_id(data, "demo-cnn")
    job = jobs.submit("data-checks", {"model_id": model_id, "data": ref})
    job = jobs.wait(job.key, 600)
    assert job.status == jobs.DONE, job.error
    return NoisyDigits(folder, data, model_id, flipped, leaked)

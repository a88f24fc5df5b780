"""CUDA check (device machine only; not part of the suite)."""
import os, sys, time, json
os.environ.setdefault("NNLAB_WORKSPACE", "/tmp/nnlab-cuda-ws")
import torch
print("torch", torch.__version__, "cuda", torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
from nnlab import config
print("nnlab device:", config.device())
from nnlab.data import load_digits
from nnlab.models import create_model
from nnlab.train import TrainConfig, train_model
from nnlab.evaluate import evaluate
d = load_digits()
m = create_model("demo-cnn", 1, 10, (8, 8), seed=0)
t = time.time(); h = train_model(m, d, TrainConfig(epochs=5, batch_size=64)); print("demo on digits cuda: test acc %.4f in %.1fs" % (h[-1].test_acc, time.time()-t), "param device", next(m.parameters()).device)
ev = evaluate(m, d, "test"); print("evaluate on", next(m.parameters()).device, "acc %.4f" % ev.accuracy)
try:
    from diagnostics import attributions as A
    x = d.x_test[:1].float().div(255) if d.x_test.dtype == torch.uint8 else d.x_test[:1]
    x = next(iter(d.stream("test", 1)))[0].to(next(m.parameters()).device)
    prep = A.prepare(m, x)
    for meth in A.METHODS:
        a = A.attribute(prep, x, meth, 0, layer=A.gradcam_layers(m)[-1])
        print("attribution", meth, "ok", tuple(a.values.shape))
except Exception as e:
    print("attributions:", type(e).__name__, e)
try:
    from diagnostics.mismatch import features_and_logits
    f, l = features_and_logits(m, d, "test"); print("features on cuda", f.shape)
except Exception as e:
    print("features:", type(e).__name__, e)
try:
    from nnlab import bulk
    print("bulk on cuda:", bulk.bulk_runtime(m, d, "test", min_images=0).summary)
except Exception as e:
    print("bulk:", type(e).__name__, e)
try:
    import copy
    from compression import pruning
    print("compression import ok")
except Exception as e:
    print("compression import:", type(e).__name__, e)

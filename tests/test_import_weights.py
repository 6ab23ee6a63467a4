"""torchvision VGG weights -> our checkpoint: logits agree within 1e-4 on the same inputs."""

import os
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from conftest import REPO
from deep_image.tools.torch_vgg import torchvision_layout_vgg
from deep_image.training.checkpoint import Trained

torch = pytest.importorskip("torch")


@pytest.mark.parametrize("variant", ["vgg16", "vgg19"])
def test_imported_logits_match_pytorch(tmp_path, variant):
    torch.manual_seed(0)
    side = 2                                             # 64 px inputs -> 2x2 before FC1
    net = torchvision_layout_vgg(variant, 1 / 8, 10, side).eval()
    for m in net.modules():                              # non-trivial biases too
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
            torch.nn.init.normal_(m.bias, std=0.1)
    pth = tmp_path / "vgg.pth"
    torch.save(net.state_dict(), pth)
    out = tmp_path / "imported"
    proc = subprocess.run([sys.executable, "-m", "deep_image.tools.import_weights",
                           "--from=torchvision", f"--variant={variant}", str(pth), str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = Trained(str(out))
    assert run.model.input_size == 64 and len(run.class_names) == 10
    x = np.random.default_rng(0).normal(size=(3, 64, 64, 3)).astype(np.float32)
    ours = np.asarray(run.model.apply(run.params, jnp.asarray(x)))
    with torch.no_grad():
        theirs = net(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
    np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=1e-4)


def test_refuses_pickled_objects(tmp_path):
    pth = tmp_path / "model.pth"
    torch.save(torch.nn.Linear(2, 2), pth)              # a whole module, not a state dict
    proc = subprocess.run([sys.executable, "-m", "deep_image.tools.import_weights",
                           "--variant=vgg16", str(pth), str(tmp_path / "out")], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    lines = [l for l in proc.stderr.splitlines() if l.strip()]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-2000:]
    assert "pickled model object" in lines[0] and "model.state_dict()" in lines[0]
    assert "\x1b" not in proc.stderr                         # no terminal colour codes


@pytest.mark.parametrize("variant", ["resnet18", "resnet50"])
def test_imported_resnet_logits_match_pytorch(tmp_path, variant):
    """Parameters and BatchNorm running statistics (non-trivial ones) of a torchvision-layout
    ResNet, in eval mode: logits agree within 1e-4."""
    from deep_image.tools.torch_resnet import torchvision_layout_resnet
    torch.manual_seed(0)
    net = torchvision_layout_resnet(variant, 1 / 8, 10).eval()
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            torch.nn.init.normal_(m.weight, 1.0, 0.2)
            torch.nn.init.normal_(m.bias, std=0.1)
            m.running_mean.normal_(std=0.1)
            m.running_var.uniform_(0.5, 1.5)
    pth = tmp_path / "resnet.pth"
    torch.save(net.state_dict(), pth)
    out = tmp_path / "imported"
    proc = subprocess.run([sys.executable, "-m", "deep_image.tools.import_weights",
                           f"--variant={variant}", str(pth), str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = Trained(str(out))
    assert run.config.model.name == "resnet" and len(run.class_names) == 10
    x = np.random.default_rng(0).normal(size=(2, 224, 224, 3)).astype(np.float32)
    ours = np.asarray(run.model.apply(run.params, jnp.asarray(x), stats=run.stats))
    with torch.no_grad():
        theirs = net(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
    np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=1e-4)

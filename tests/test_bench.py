"""The benchmarks' own logic (the figures come from running them, never from tests): the
projection of host cores per GPU (bench.pipeline), by hand; the peak table; bench.step's
JSON, written after every phase, so a phase killed by a time limit keeps what the earlier
ones measured. The bench modules define absl flags (several of the same name), so none is
imported here: bench.step runs in a subprocess."""

import json
import os
import signal
import subprocess
import sys

import pytest

from conftest import REPO, wait_for
from deep_image.bench.hardware import cores_per_gpu, peak_tflops


def test_cores_per_gpu_by_hand():
    # VGG-16 at 224: 15.47 G multiply-adds forward (Simonyan & Zisserman's 15.5 GFLOPs, as
    # multiply-adds, plus the FC layers: 13 convs 15.35e9 + FC 0.12e9); training ~3 x forward
    # at 2 FLOPs per multiply-add; an H100 SXM at 989 TFLOP/s and MFU 0.5
    got = cores_per_gpu(per_core=500.0, mfu=0.5)
    vgg = got["vgg16"]["H100 SXM"]
    assert vgg["images_per_second"] == pytest.approx(989e12 * 0.5 / (6 * 15.47e9), rel=2e-3)
    assert vgg["cores"] == pytest.approx(vgg["images_per_second"] / 500.0)
    resnet = got["resnet50"]["H100 PCIe"]
    assert resnet["images_per_second"] == pytest.approx(756e12 * 0.5 / (6 * 3.8e9))


def test_peaks_tell_the_pcie_h100_from_the_sxm():
    assert peak_tflops("NVIDIA H100 PCIe", "bfloat16") == 756.0
    assert peak_tflops("NVIDIA H100 80GB HBM3", "bfloat16") == 989.0
    assert peak_tflops("NVIDIA H200", "bfloat16") == 989.0
    assert peak_tflops("cpu", "bfloat16") == 0.0


def test_step_benchmark_saves_each_phase_before_the_next(tmp_path):
    """Paused as soon as the model phase is in the JSON, while the later phases (profile,
    pipeline) have not finished, and killed: the file holds the model phase."""
    out = tmp_path / "step.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "deep_image.bench.step", "--variant=vgg11", "--width=0.0625",
         "--crop=32", "--batch=8", "--dtype=float32", "--steps=2", "--notorch",
         f"--profile={tmp_path / 'trace'}", "--jpegs=16", "--jpeg_scale=48", f"--json={out}"],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env={**os.environ, "JAX_PLATFORMS": "cpu"})
    try:
        def model_saved():
            assert proc.poll() is None, "the benchmark ended before its model phase was saved"
            try:
                return "images_per_second_on_device" in json.loads(out.read_text())
            except (FileNotFoundError, json.JSONDecodeError):
                return False
        wait_for(model_saved, timeout=240, what="the model phase in the JSON")
        os.kill(proc.pid, signal.SIGSTOP)
        phase_one = json.loads(out.read_text())
        assert "images_per_second_with_pipeline" not in phase_one   # still to come
        proc.kill()
        proc.wait(timeout=30)
        kept = json.loads(out.read_text())
        assert kept["images_per_second_on_device"] > 0
        assert kept["model_median_step_seconds"] <= kept["model_p90_step_seconds"]
        assert kept["first_step_seconds"] > kept["model_median_step_seconds"]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)


def test_pipeline_benchmark_measures_the_device_augmentation_alone(tmp_path):
    """`--parts=device`: only the device path's three stages, written to the JSON (the GPU
    script runs it this way)."""
    out = tmp_path / "pipeline.json"
    proc = subprocess.run([sys.executable, "-m", "deep_image.bench.pipeline", "--parts=device",
                           "--images=4", "--seconds=0.2", "--device_batch=4", f"--json={out}"],
                          cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    device = result["device"]
    assert device["backend"] == "cpu" and device["batch"] == 4
    for stage in ("device_crop_flip", "device_augment_only", "device_augment_all_ops"):
        assert device[stage] > 0 and device[f"{stage}_per_core"] > 0
    assert "grain" not in result and "decode_per_core" not in result

"""bench.pipeline's projection of host cores per GPU, by hand, and its run of the training
pipeline on JPEGs (the benchmark itself: python -m deep_image.bench.pipeline)."""

import pytest
from absl import flags

from deep_image.bench import pipeline as bench


def test_cores_per_gpu_by_hand():
    # VGG-16 at 224: 15.47 G multiply-adds forward (Simonyan & Zisserman's 15.5 GFLOPs, as
    # multiply-adds, plus the FC layers: 13 convs 15.35e9 + FC 0.12e9); training ~3 x forward
    # at 2 FLOPs per multiply-add; an H100 SXM at 989 TFLOP/s and MFU 0.5
    got = bench.cores_per_gpu(per_core=500.0, mfu=0.5)
    vgg = got["vgg16"]["H100 SXM"]
    assert vgg["images_per_second"] == pytest.approx(989e12 * 0.5 / (6 * 15.47e9), rel=2e-3)
    assert vgg["cores"] == pytest.approx(vgg["images_per_second"] / 500.0)
    resnet = got["resnet50"]["H100 PCIe"]
    assert resnet["images_per_second"] == pytest.approx(756e12 * 0.5 / (6 * 3.8e9))


def test_the_training_pipeline_is_timed_on_jpegs():
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()
    jpegs = bench.make_jpegs(4)
    assert all(j[:2] == b"\xff\xd8" for j in jpegs)          # JPEG files
    assert bench.grain_rate(jpegs, workers=0, seconds=0.3, batch=4) > 0

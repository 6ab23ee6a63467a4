"""Peak dense throughput of the accelerators the benchmarks know (NVIDIA datasheets), for
MFU (bench.step) and the host cores one GPU needs (bench.pipeline). No flags: importable
anywhere."""

# (substring of jax's / torch's device name, dtype, TFLOP/s); the PCIe H100 before "H100"
PEAK_TFLOPS = (("H100 PCIe", "bfloat16", 756.0), ("H100 PCIe", "float32", 51.0),
               ("H100", "bfloat16", 989.0), ("H100", "float32", 67.0),
               ("H200", "bfloat16", 989.0), ("H200", "float32", 67.0),
               ("A100", "bfloat16", 312.0), ("A100", "float32", 19.5))


def peak_tflops(device_kind: str, dtype: str) -> float:
    """The table's peak for a device kind (e.g. 'NVIDIA H100 PCIe') and dtype, else 0."""
    return next((v for k, d, v in PEAK_TFLOPS if k in device_kind and d == dtype), 0.0)

# the GPUs bench.pipeline projects for, by the device names their peaks are found under
GPUS = {"H100 SXM": "NVIDIA H100 80GB HBM3", "H100 PCIe": "NVIDIA H100 PCIe"}
# ResNet-50's forward multiply-adds per 224 image: 3.8e9 (He et al. 2016, Table 1, which counts
# multiply-adds as FLOPs); VGG-16's come from models/vgg.py
RESNET50_MULTIPLY_ADDS_224 = 3.8e9


def cores_per_gpu(per_core: float, mfu: float, crop: int = 224) -> dict:
    """{model: {gpu: {images_per_second one GPU trains at (train FLOPs = 3 x forward, 2 per
    multiply-add, at `mfu` of the bfloat16 peak), cores: host cores at `per_core` images/s
    each}}} for VGG-16 and ResNet-50 at `crop`."""
    from deep_image.models.vgg import multiply_adds
    forward = {"vgg16": multiply_adds("vgg16", 1.0, crop, 1000),
               "resnet50": RESNET50_MULTIPLY_ADDS_224 * (crop / 224) ** 2}
    out = {}
    for model, macs in forward.items():
        for gpu, name in GPUS.items():
            rate = peak_tflops(name, "bfloat16") * 1e12 * mfu / (3 * 2 * macs)
            out.setdefault(model, {})[gpu] = {"images_per_second": rate,
                                              "cores": rate / per_core}
    return out

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

"""Float32 convolutions (forward, input gradient, weight gradient) against float64, with
jaxlib's setting (YNNPACK takes some shapes) and with deep_image's (Eigen takes them all): the
largest error relative to the largest float64 value, and whether YNNPACK ran. The shapes are
ResNet-18 x1/8's on 32 px inputs (the parallel tests' net) at batch 2 (one of 8 devices) and 16.

    python docs/xla_cpu/conv_precision.py
"""

import os
import subprocess
import sys

# (batch, size, in channels, out channels, kernel, stride): stem, 3x3 layers, 1x1 shortcuts
SHAPES = [(b, *s) for s in [(32, 3, 8, 7, 2), (8, 8, 8, 3, 1), (8, 8, 16, 3, 2), (4, 16, 32, 3, 2),
                            (2, 32, 64, 3, 2), (1, 64, 64, 3, 1), (8, 8, 16, 1, 2),
                            (2, 32, 64, 1, 2)] for b in (2, 16)]
YNN = "--xla_cpu_experimental_ynn_fusion_type"


def run(precision: str, out: str):
    import jax
    if precision == "64":
        jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    import numpy as np
    dtype = np.float64 if precision == "64" else np.float32
    rng = np.random.default_rng(0)
    results, ynn = {}, []
    for i, (n, h, cin, cout, k, s) in enumerate(SHAPES):
        def conv(x, w, s=s, k=k):
            return jax.lax.conv_general_dilated(x, w, (s, s), [(k // 2, k // 2)] * 2,
                                                dimension_numbers=("NHWC", "HWIO", "NHWC"))
        x = rng.standard_normal((n, h, h, cin)).astype(dtype)
        w = (0.1 * rng.standard_normal((k, k, cin, cout))).astype(dtype)
        ct = rng.standard_normal(jax.eval_shape(conv, x, w).shape).astype(dtype)
        grad = jax.jit(jax.grad(lambda x, w: jnp.sum(conv(x, w) * ct), (0, 1)))
        ynn.append("ynn_fusion" in grad.lower(x, w).compile().as_text())
        results[f"{i}y"] = np.asarray(jax.jit(conv)(x, w))
        results[f"{i}gx"], results[f"{i}gw"] = map(np.asarray, grad(x, w))
    np.savez(out, ynn=np.array(ynn), **results)


def main():
    import tempfile

    import numpy as np
    here = os.path.abspath(__file__)
    with tempfile.TemporaryDirectory() as tmp:
        settings = {"float64": ("64", ""), "jaxlib": ("32", f"{YNN}=+individual_convolution"),
                    "deep_image": ("32", "")}
        for name, (precision, flags) in settings.items():
            env = {**os.environ, "XLA_FLAGS": flags, "JAX_PLATFORMS": "cpu"}
            subprocess.run([sys.executable, here, "--worker", precision, f"{tmp}/{name}.npz"],
                           check=True, env=env)
        ref = np.load(f"{tmp}/float64.npz")
        got = {name: np.load(f"{tmp}/{name}.npz") for name in ("jaxlib", "deep_image")}
        print(f"{'batch, size, in, out, kernel, stride':<40}{'jaxlib (YNN?) y, dx, dw':<36}"
              "deep_image y, dx, dw")
        for i, shape in enumerate(SHAPES):
            row = f"{str(shape):<40}"
            for name, r in got.items():
                errs = [np.max(np.abs(r[f"{i}{k}"] - ref[f"{i}{k}"]))
                        / np.max(np.abs(ref[f"{i}{k}"])) for k in ("y", "gx", "gw")]
                where = "YNN " if r["ynn"][i] else "Eigen "
                row += f"{where + ' '.join(f'{e:.0e}' for e in errs):<36}"
            print(row)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--worker"]:
        import deep_image  # noqa: F401  (its XLA defaults, unless XLA_FLAGS names them)
        run(*sys.argv[2:4])
    else:
        main()

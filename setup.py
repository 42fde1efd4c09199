"""Build of the optional C extensions; all other metadata lives in pyproject.toml.

``aiowhisper_npu.native._fastmath`` fuses the CPU kernels' element-wise passes (exp, bias + exact-erf GELU, layer norm);
``aiowhisper_npu.native._gemm`` multiplies activations by weights packed once at load time (``_gemm_bf16``: the
same in bf16, AVX512_BF16 with an AVX-512F fallback, chosen at run time) and
``aiowhisper_npu.native._attention`` runs attention heads in one kernel each (both AVX-512);
``aiowhisper_npu.native._gemv`` multiplies a few decoder rows by (out, in) weights (AVX2 + FMA, portable
fallback). All are optional: if one cannot be compiled, installation goes on and the kernels use their numpy
forms (tests/reference/test_runtime.py checks that they built on x86-64 Linux).
"""

from setuptools import Extension, setup

FLAGS = ["-O3", "-std=c11", "-fno-math-errno", "-fno-trapping-math", "-fopenmp-simd"]
HEADERS = [f"aiowhisper_npu/native/{name}.h" for name in ("_attention_bf16", "_buffers", "_poly", "_simd")]

setup(
    ext_modules=[
        Extension(f"aiowhisper_npu.native.{name}", [f"aiowhisper_npu/native/{name}.c"], depends=HEADERS,
                  extra_compile_args=FLAGS, optional=True)
        for name in ("_fastmath", "_gemm", "_gemm_bf16", "_attention", "_gemv")
    ]
)

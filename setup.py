"""Build of the optional C extension; all other metadata lives in pyproject.toml.

``aiowhisper_npu._fastmath`` fuses the CPU kernels' element-wise passes (exp, bias + exact-erf GELU). It is
optional: if it cannot be compiled, installation goes on and the kernels use their numpy forms.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "aiowhisper_npu._fastmath",
            ["aiowhisper_npu/_fastmath.c"],
            extra_compile_args=["-O3", "-std=c11", "-fno-math-errno", "-fno-trapping-math", "-fopenmp-simd"],
            optional=True,
        )
    ]
)

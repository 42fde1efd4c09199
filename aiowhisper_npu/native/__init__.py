"""Optional C kernels built by ``pip install`` (setup.py): fused element-wise passes (``_fastmath``), the
packed-weight GEMM (``_gemm``; ``_gemm_bf16`` for precision="bf16") and fused attention (``_attention``), the
decoder's few-row products (``_gemv``). Python code imports them guardedly."""

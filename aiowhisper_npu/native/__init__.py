"""Optional C kernels built by ``pip install`` (setup.py): fused element-wise passes (``_fastmath``), the
packed-weight GEMM (``_gemm``) and fused attention (``_attention``). Python code imports them guardedly."""

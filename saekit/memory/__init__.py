"""CPU memory reuse for the hot loops: glibc's heap kept for large blocks (:mod:`.heap`) and reused
per-step buffers (:mod:`.scratch`)."""

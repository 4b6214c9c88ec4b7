"""Data: the NIH reader (nih), the decode-once image cache (cache) and the batch loader (loader)."""

"""Data: the NIH reader (nih), the decode-once image cache (cache), the batch loader (loader) and the data
trials run on (prepare: which dataset, every cache built up front, one trial's splits)."""

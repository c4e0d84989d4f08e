"""`assemble bench`: tokens/s, MFU, peak memory and a per-op GPU time breakdown of training steps.

measure.py times any training step (ours or the transformers baseline alike); workload.py makes
the synthetic batches; breakdown.py sorts profiled kernels into ops; report.py prints the tables.
"""

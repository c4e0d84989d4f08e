"""The training loop (`loop.train`) and what it needs: optimizer and schedule (`optim`),
checkpoints with exact resume (`checkpoint`), metrics (`metrics`), the run folder (`run_dir`).

Nothing is imported here, so `assembler.train.checkpoint` loads without the model stack.
"""

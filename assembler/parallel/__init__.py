"""The parallel layer: a built model made ready for N processes, and the processes themselves.

parallelize.py                    activation checkpointing, torch.compile and FSDP2, per block
activation_checkpoint_plan.py     `activation_checkpointing.mode: auto`: the plan from a memory model
activation_checkpoint_probe.py    the probe that measures the blocks the plan is chosen from
distributed.py                    the process group (torchrun), ranks, errors raised on every rank
"""

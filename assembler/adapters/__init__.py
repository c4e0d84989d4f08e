"""Parameter-efficient fine-tuning: LoRA adapters on a built model's linear layers, and their PEFT
folder format (see lora_linear.py for why the module is ours and the format is PEFT's)."""

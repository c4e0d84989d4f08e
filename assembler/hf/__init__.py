"""Hugging Face formats: config.json ⇄ a spec's model section, safetensors folders in and out.

config.py         hf_config_from_spec / spec_from_hf_config (dispatched to the family by model_type)
config_reader.py  the field-by-field reader a family's hf_config.py refuses config fields with
checkpoint/       load_hf_checkpoint / save_hf_checkpoint (dtype policy, shards, serving files)
export.py         `assemble export`: an HF folder, checkpoint or run folder written as an HF folder
"""

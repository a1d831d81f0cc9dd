"""CCL-scheduled ReFL LoRA fine-tuning of SR policies (training/ccl_lora.py): data, monitor, export,
tiny components. The policies live in :mod:`diffusers_ext.policies`, the reward and the CCL
schedule in :mod:`diffusers_ext.rewards`."""
